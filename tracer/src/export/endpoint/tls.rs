//! `tls_server_config` of the web config file, made into a rustls server configuration with the
//! meaning Go's crypto/tls gives each key (the toolkit hands them to it): client authentication
//! types, versions, TLS 1.2 cipher suites and curves by their Go names.
use std::{fmt, path::Path, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, bail};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore,
    SignatureScheme, SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

/// Go's names of the TLS 1.2 suites its `tls.CipherSuites()` offers: the names a file may use.
/// rustls implements the AEAD ones with forward secrecy; the others are refused by name.
const GO_CIPHER_SUITES: [&str; 17] = [
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The TLS configuration, or `None` when the section names no certificate (plain HTTP, as
/// the toolkit serves then). `files` receives every file read, `notes` what is done differently.
pub(crate) fn server_config(
    mut file: TlsFile,
    dir: &Path,
    files: &mut Vec<PathBuf>,
    notes: &mut Vec<String>,
) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let mut read = |inline: Option<String>, name: Option<String>, what: &str| -> Result<_> {
        match (inline, name) {
            (Some(_), Some(_)) => bail!("both {what} and {what}_file are given"),
            (Some(text), None) => Ok(Some(text.into_bytes())),
            (None, Some(name)) => {
                let path = resolve(dir, &name);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {what}_file {}", path.display()))?;
                files.push(path);
                Ok(Some(bytes))
            }
            (None, None) => Ok(None),
        }
    };
    let cert = read(file.cert.take(), file.cert_file.take(), "cert")?;
    let key = read(file.key.take(), file.key_file.take(), "key")?;
    let client_ca = read(
        file.client_ca.take(),
        file.client_ca_file.take(),
        "client_ca",
    )?;
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => bail!("a certificate without its key (key_file)"),
        (None, Some(_)) => bail!("a key without its certificate (cert_file)"),
        (Some(cert), Some(key)) => (cert, key),
    };
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("the certificate is not PEM ({err})"))?;
    if chain.is_empty() {
        bail!("no certificate in the certificate file");
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|err| anyhow::anyhow!("the key is not a PEM private key ({err})"))?;
    let provider = Arc::new(provider(&file, notes)?);
    let verifier = client_verifier(&file, client_ca.as_deref(), &provider)?;
    let versions = versions(&file, notes)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .context("the versions and cipher suites leave nothing to agree on")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the key does not match the certificate")?;
    config.ignore_client_order = file.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A name the file gives joined to its directory when relative.
fn resolve(dir: &Path, name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() {
        path.to_owned()
    } else {
        dir.join(path)
    }
}

/// ring's suites and curves, narrowed to those the file lists, in its order.
fn provider(file: &TlsFile, notes: &mut Vec<String>) -> Result<CryptoProvider> {
    // rustls now steers to aws-lc-rs for post-quantum key exchange; ring builds with a C compiler
    // alone, and every client that offers a post-quantum group offers X25519 beside it.
    #[allow(deprecated)]
    let mut provider = ring::default_provider();
    if let Some(names) = &file.cipher_suites {
        let mut chosen = Vec::new();
        let mut unsupported = Vec::new();
        for name in names {
            // Go also calls the ChaCha suites by their names without the hash.
            let full = match name.as_str() {
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
                | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                    format!("{name}_SHA256")
                }
                _ => name.clone(),
            };
            let found = provider
                .cipher_suites
                .iter()
                .find(|suite| format!("{:?}", suite.suite()) == full);
            match found {
                Some(suite) => chosen.push(*suite),
                None if GO_CIPHER_SUITES.contains(&full.as_str()) => unsupported.push(name.clone()),
                None => bail!("cipher_suites: unknown suite {name}"),
            }
        }
        if !unsupported.is_empty() {
            notes.push(format!(
                "cipher_suites: not offered (rustls implements only AEAD suites with forward \
                 secrecy): {}",
                unsupported.join(", ")
            ));
        }
        // As in Go, the list is about TLS 1.2: TLS 1.3's suites stay.
        let tls12_chosen = chosen.iter().any(|suite| suite.tls13().is_none());
        if !tls12_chosen {
            bail!("cipher_suites: none of the listed TLS 1.2 suites can be offered");
        }
        let tls13 = provider
            .cipher_suites
            .iter()
            .filter(|suite| suite.tls13().is_some())
            .copied();
        chosen.retain(|suite| suite.tls13().is_none());
        provider.cipher_suites = chosen.into_iter().chain(tls13).collect();
    }
    if let Some(names) = &file.curve_preferences {
        let mut groups = Vec::new();
        for name in names {
            let wanted = match name.as_str() {
                "X25519" => rustls::NamedGroup::X25519,
                "CurveP256" => rustls::NamedGroup::secp256r1,
                "CurveP384" => rustls::NamedGroup::secp384r1,
                "CurveP521" | "X25519MLKEM768" => {
                    notes.push(format!("curve_preferences: {name} is not offered"));
                    continue;
                }
                _ => bail!("curve_preferences: unknown curve {name}"),
            };
            groups.extend(
                provider
                    .kx_groups
                    .iter()
                    .filter(|group| group.name() == wanted)
                    .copied(),
            );
        }
        if groups.is_empty() {
            bail!("curve_preferences: none of the listed curves can be offered");
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

fn versions(
    file: &TlsFile,
    notes: &mut Vec<String>,
) -> Result<Vec<&'static SupportedProtocolVersion>> {
    let rank = |name: &str, what: &str| -> Result<u8> {
        match name {
            "TLS10" => Ok(10),
            "TLS11" => Ok(11),
            "TLS12" => Ok(12),
            "TLS13" => Ok(13),
            _ => bail!("{what}: unknown version {name} (TLS10, TLS11, TLS12 or TLS13)"),
        }
    };
    let min = file
        .min_version
        .as_deref()
        .map(|name| rank(name, "min_version"))
        .transpose()?
        .unwrap_or(12);
    let max = file
        .max_version
        .as_deref()
        .map(|name| rank(name, "max_version"))
        .transpose()?
        .unwrap_or(13);
    if min > max {
        bail!("min_version is above max_version");
    }
    if max < 12 {
        bail!("max_version: TLS 1.0 and 1.1 are not offered (rustls implements 1.2 and 1.3)");
    }
    if min < 12 {
        notes.push("min_version: TLS 1.0 and 1.1 are not offered; TLS 1.2 is the least".into());
    }
    let mut versions = Vec::new();
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok(versions)
}

/// Go's client authentication types over webpki's verifier, with `client_allowed_sans` checked
/// after it.
fn client_verifier(
    file: &TlsFile,
    client_ca: Option<&[u8]>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let kind = file.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let (verify, mandatory) = match kind {
        "" | "NoClientCert" => {
            if client_ca.is_some() {
                bail!("client CAs are given without a client_auth_type that uses them");
            }
            if file.client_allowed_sans.is_some() {
                bail!("client_allowed_sans needs client certificates that are verified");
            }
            return Ok(WebPkiClientVerifier::no_client_auth());
        }
        "RequestClientCert" => (false, false),
        "RequireAnyClientCert" | "RequireClientCert" => (false, true),
        "VerifyClientCertIfGiven" => (true, false),
        "RequireAndVerifyClientCert" => (true, true),
        _ => bail!("client_auth_type: unknown type {kind}"),
    };
    let webpki = match (verify, client_ca) {
        (true, Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|err| anyhow::anyhow!("client CA is not PEM ({err})"))?;
                roots
                    .add(cert)
                    .map_err(|err| anyhow::anyhow!("client CA: {err}"))?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if mandatory {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            Some(
                builder
                    .build()
                    .map_err(|err| anyhow::anyhow!("client CA: {err}"))?,
            )
        }
        (true, None) => bail!("client_auth_type {kind} needs client_ca_file"),
        (false, _) => None,
    };
    let allowed_sans = match &file.client_allowed_sans {
        Some(_) if webpki.is_none() => {
            bail!("client_allowed_sans needs client certificates that are verified")
        }
        Some(names) => names
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| {
                    anyhow::anyhow!(
                        "client_allowed_sans: {name:?} is neither a DNS name nor an IP address \
                         (the names this endpoint can match)"
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    Ok(Arc::new(ClientCerts {
        webpki,
        mandatory,
        allowed_sans,
        algorithms: provider.signature_verification_algorithms,
    }))
}

/// Asks for client certificates; verifies them with webpki when the type says so, then
/// requires one of the allowed names.
struct ClientCerts {
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
    allowed_sans: Vec<ServerName<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCerts")
            .field("verified", &self.webpki.is_some())
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for ClientCerts {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki
            .as_ref()
            .map_or(&[], |webpki| webpki.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if let Some(webpki) = &self.webpki {
            webpki.verify_client_cert(end_entity, intermediates, now)?;
        }
        if !self.allowed_sans.is_empty() {
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
            let allowed = self
                .allowed_sans
                .iter()
                .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok());
            if !allowed {
                return Err(TlsError::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)] // ring's provider, as the daemon uses it
    use rustls::ProtocolVersion;

    use super::*;

    /// A self-signed certificate and its key, inline as the file may give them.
    fn inline() -> TlsFile {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        TlsFile {
            cert: Some(pair.cert.pem()),
            key: Some(pair.signing_key.serialize_pem()),
            ..TlsFile::default()
        }
    }

    fn build(file: TlsFile) -> Result<(Arc<rustls::ServerConfig>, Vec<String>)> {
        let mut notes = Vec::new();
        let config = server_config(file, Path::new("/nonexistent"), &mut Vec::new(), &mut notes)?;
        Ok((config.context("no TLS")?, notes))
    }

    fn refusal(file: TlsFile) -> String {
        match build(file) {
            Ok(_) => panic!("accepted"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn no_certificate_is_plain_http() {
        let config = server_config(
            TlsFile::default(),
            Path::new("/"),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .unwrap();
        assert!(config.is_none());
        let half = TlsFile {
            key: None,
            ..inline()
        };
        assert!(refusal(half).contains("without its key"));
        let both = TlsFile {
            cert_file: Some("cert.pem".to_owned()),
            ..inline()
        };
        assert!(refusal(both).contains("both cert and cert_file"));
    }

    /// The versions a file's min and max give, and whether it said something.
    fn versions_of(min: Option<&str>, max: Option<&str>) -> Result<(Vec<ProtocolVersion>, bool)> {
        let file = TlsFile {
            min_version: min.map(str::to_owned),
            max_version: max.map(str::to_owned),
            ..TlsFile::default()
        };
        let mut notes = Vec::new();
        let versions = versions(&file, &mut notes)?;
        Ok((
            versions.iter().map(|v| v.version).collect(),
            !notes.is_empty(),
        ))
    }

    #[test]
    fn versions_as_go_names_them() {
        use ProtocolVersion::{TLSv1_2, TLSv1_3};
        build(inline()).unwrap();
        assert_eq!(
            versions_of(None, None).unwrap(),
            (vec![TLSv1_3, TLSv1_2], false)
        );
        assert_eq!(
            versions_of(Some("TLS13"), None).unwrap(),
            (vec![TLSv1_3], false)
        );
        assert_eq!(
            versions_of(None, Some("TLS12")).unwrap(),
            (vec![TLSv1_2], false)
        );
        assert_eq!(
            versions_of(Some("TLS10"), None).unwrap(),
            (vec![TLSv1_3, TLSv1_2], true),
            "said, not silent"
        );
        for (min, max, says) in [
            ("TLS10", "TLS11", "not offered"),
            ("TLS13", "TLS12", "above"),
            ("TLS14", "TLS13", "unknown version"),
        ] {
            let err = versions_of(Some(min), Some(max)).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{min}..{max}: {err:#}");
        }
    }

    #[test]
    fn cipher_suites_and_curves_by_go_names() {
        let some = TlsFile {
            cipher_suites: Some(vec![
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned(),
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".to_owned(),
                "TLS_RSA_WITH_AES_128_CBC_SHA".to_owned(),
            ]),
            curve_preferences: Some(vec!["CurveP521".to_owned(), "X25519".to_owned()]),
            ..inline()
        };
        let (config, notes) = build(some).unwrap();
        let suites: Vec<String> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter(|suite| suite.tls13().is_none())
            .map(|suite| format!("{:?}", suite.suite()))
            .collect();
        assert_eq!(
            suites,
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(config.crypto_provider().kx_groups.len(), 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
        for file in [
            TlsFile {
                cipher_suites: Some(vec!["TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()]),
                ..inline()
            },
            TlsFile {
                cipher_suites: Some(vec!["TLS_MADE_UP".to_owned()]),
                ..inline()
            },
            TlsFile {
                curve_preferences: Some(vec!["CurveP521".to_owned()]),
                ..inline()
            },
            TlsFile {
                curve_preferences: Some(vec!["Curve25519".to_owned()]),
                ..inline()
            },
        ] {
            refusal(file);
        }
    }

    #[test]
    fn client_authentication_types() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let with = |kind: &str, ca_pem: Option<&str>, sans: Option<&[&str]>| TlsFile {
            client_auth_type: Some(kind.to_owned()),
            client_ca: ca_pem.map(str::to_owned),
            client_allowed_sans: sans.map(|s| s.iter().map(|n| n.to_string()).collect()),
            ..inline()
        };
        let ca_pem = ca.cert.pem();
        let provider = Arc::new(ring::default_provider());
        for (kind, ca, mandatory) in [
            ("RequestClientCert", None, false),
            ("RequireAnyClientCert", None, true),
            ("VerifyClientCertIfGiven", Some(ca_pem.as_str()), false),
            ("RequireAndVerifyClientCert", Some(ca_pem.as_str()), true),
        ] {
            build(with(kind, ca, None)).unwrap();
            let verifier =
                client_verifier(&with(kind, ca, None), ca.map(str::as_bytes), &provider).unwrap();
            assert!(verifier.offer_client_auth(), "{kind}");
            assert_eq!(verifier.client_auth_mandatory(), mandatory, "{kind}");
        }
        let verifier = client_verifier(&with("NoClientCert", None, None), None, &provider).unwrap();
        assert!(!verifier.offer_client_auth());
        for (file, says) in [
            (
                with("NoClientCert", Some(&ca_pem), None),
                "without a client_auth_type",
            ),
            (
                with("RequireAndVerifyClientCert", None, None),
                "needs client_ca_file",
            ),
            (
                with("RequireAnyClientCert", None, Some(&["a.example"])),
                "verified",
            ),
            (
                with(
                    "RequireAndVerifyClientCert",
                    Some(&ca_pem),
                    Some(&["me@a.example"]),
                ),
                "neither a DNS name",
            ),
            (with("Always", None, None), "unknown type"),
        ] {
            let err = refusal(file);
            assert!(err.contains(says), "{err}");
        }
    }
    #[test]
    fn relative_names_are_beside_the_file() {
        assert_eq!(
            resolve(Path::new("/etc/tcpstate"), "cert.pem"),
            Path::new("/etc/tcpstate/cert.pem")
        );
        assert_eq!(
            resolve(Path::new("/etc/tcpstate"), "/srv/cert.pem"),
            Path::new("/srv/cert.pem")
        );
    }
}
