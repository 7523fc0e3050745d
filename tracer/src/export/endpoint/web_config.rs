//! `--web.config.file`: the file node_exporter and every exporter built on Prometheus'
//! exporter-toolkit read (TLS, client certificates, basic auth, response headers), in the same
//! format so that a user's existing file works unchanged. Relative file names are taken from the
//! file's own directory, as the toolkit does. Loading is all or nothing: a file that cannot be used
//! is an error, never a silent fallback to plain HTTP.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    str::FromStr as _,
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::tls::{self, TlsFile};

/// The file as written. Unknown keys are refused, as the toolkit refuses them (a typo must not
/// turn authentication off).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WebFile {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    auth_excluded_paths: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; the endpoint speaks HTTP/1.1, which Prometheus scrapes with.
    #[serde(rename = "http2")]
    _http2: Option<bool>,
    headers: Option<HeadersFile>,
}

/// The response headers the toolkit allows, and only those.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeadersFile {
    #[serde(rename = "Content-Security-Policy")]
    content_security_policy: Option<String>,
    #[serde(rename = "X-Frame-Options")]
    x_frame_options: Option<String>,
    #[serde(rename = "X-Content-Type-Options")]
    x_content_type_options: Option<String>,
    #[serde(rename = "X-XSS-Protection")]
    x_xss_protection: Option<String>,
    #[serde(rename = "Strict-Transport-Security")]
    strict_transport_security: Option<String>,
}

/// What the endpoint does with each connection and request, from one reading of the file.
#[derive(Default)]
pub(crate) struct Web {
    /// TLS, when the file has a certificate; plain HTTP otherwise.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// User name → bcrypt hash; no users, no authentication.
    pub(crate) users: BTreeMap<String, String>,
    /// A hash of the users' cost checked for unknown names, so that the time of a refusal does
    /// not tell which names exist.
    pub(crate) decoy_hash: Option<String>,
    pub(crate) excluded_paths: Vec<String>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// What the file asks for that this endpoint does differently, said once per reading.
    pub(crate) notes: Vec<String>,
}

/// One reading of the file, with what it read, so that a change to any of those files (a
/// rotated certificate) is picked up at the next connection.
pub(crate) struct Loaded {
    pub(crate) web: Web,
    pub(crate) files: Vec<PathBuf>,
}

/// Reads and checks the file and every file it names.
pub(crate) fn load(path: &Path) -> Result<Loaded> {
    let text = fs::read_to_string(path).context("cannot read it")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut loaded = parse(&text, dir)?;
    loaded.files.insert(0, path.to_owned());
    Ok(loaded)
}

fn parse(text: &str, dir: &Path) -> Result<Loaded> {
    let file: WebFile = if text.trim().is_empty() {
        WebFile::default()
    } else {
        serde_saphyr::from_str(text).map_err(|err| anyhow::anyhow!("{}", first_line(&err)))?
    };
    let mut notes = Vec::new();
    let mut files = Vec::new();
    let tls = match file.tls_server_config {
        Some(tls) => {
            tls::server_config(tls, dir, &mut files, &mut notes).context("tls_server_config")?
        }
        None => None,
    };
    let users = file.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        bcrypt::HashParts::from_str(hash).map_err(|err| {
            anyhow::anyhow!(
                "basic_auth_users: the password of {user:?} is not a bcrypt hash ({err})"
            )
        })?;
    }
    let decoy_hash = decoy(&users)?;
    if !users.is_empty() && tls.is_none() {
        notes.push("basic auth without TLS: passwords cross the network in clear text".to_owned());
    }
    let headers = file
        .http_server_config
        .and_then(|http| http.headers)
        .map(headers)
        .transpose()
        .context("http_server_config")?
        .unwrap_or_default();
    Ok(Loaded {
        web: Web {
            tls,
            users,
            decoy_hash,
            excluded_paths: file.auth_excluded_paths.unwrap_or_default(),
            headers,
            notes,
        },
        files,
    })
}

/// A hash of the highest cost among the users, of a password nobody has.
fn decoy(users: &BTreeMap<String, String>) -> Result<Option<String>> {
    let Some(cost) = users
        .values()
        .filter_map(|hash| bcrypt::HashParts::from_str(hash).ok())
        .map(|parts| parts.get_cost())
        .max()
    else {
        return Ok(None);
    };
    let hash = bcrypt::hash_with_salt(b"tcpstate decoy", cost, [0x5a; 16])
        .context("basic_auth_users: cannot hash with the users' cost")?;
    Ok(Some(hash.to_string()))
}

fn headers(file: HeadersFile) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let given = [
        (
            "content-security-policy",
            file.content_security_policy,
            None,
        ),
        (
            "x-frame-options",
            file.x_frame_options,
            Some(&["deny", "sameorigin"][..]),
        ),
        (
            "x-content-type-options",
            file.x_content_type_options,
            Some(&["nosniff"][..]),
        ),
        ("x-xss-protection", file.x_xss_protection, None),
        (
            "strict-transport-security",
            file.strict_transport_security,
            None,
        ),
    ];
    let mut headers = Vec::new();
    for (name, value, allowed) in given {
        // A blank value leaves the header unset, as the toolkit documents.
        let Some(value) = value.filter(|value| !value.trim().is_empty()) else {
            continue;
        };
        if let Some(allowed) = allowed
            && !allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim()))
        {
            bail!(
                "headers: {name} may be {}, not {value:?}",
                allowed.join(" or ")
            );
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| anyhow::anyhow!("headers: {name}: {value:?} is not a header value"))?;
        headers.push((HeaderName::from_static(name), value));
    }
    Ok(headers)
}

/// What identifies a file's content without reading it: a rotated certificate (a new file moved
/// in place, or a symbolic link switched, as Kubernetes does with secrets) changes it.
pub(crate) type Fingerprint = Vec<Option<(u64, u64, i64, i64, u64)>>;

pub(crate) fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|file| {
            fs::metadata(file).ok().map(|meta| {
                (
                    meta.dev(),
                    meta.ino(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.size(),
                )
            })
        })
        .collect()
}

/// The parser's message says where and what on its first line, then quotes the file: the daemon
/// says one line.
fn first_line(err: &serde_saphyr::Error) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default().trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse_str(text: &str) -> Result<Web> {
        parse(text, Path::new("/nonexistent")).map(|loaded| loaded.web)
    }

    /// The one-line error a file gets.
    fn refusal(text: &str) -> String {
        match parse_str(text) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn an_empty_file_is_plain_http_without_auth() {
        for text in ["", "\n", "# nothing\n", "{}"] {
            let web = parse_str(text).unwrap();
            assert!(web.tls.is_none() && web.users.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        // Cost 4 keeps the test fast.
        let hash = bcrypt::hash("secret", 4).unwrap();
        let web = parse_str(&format!("basic_auth_users:\n  prometheus: '{hash}'\n")).unwrap();
        assert_eq!(web.users.len(), 1);
        assert!(web.decoy_hash.is_some());
        assert!(web.notes.iter().any(|n| n.contains("clear text")));
        let err = refusal("basic_auth_users:\n  prometheus: secret\n");
        assert!(err.contains("not a bcrypt hash"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "basic_auth_user:\n  a: b\n",
            "tls_server_config:\n  certfile: x\n",
            "http_server_config:\n  headers:\n    X-Powered-By: me\n",
        ] {
            let err = refusal(text);
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn headers_are_checked() {
        let web = parse_str(
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: ''\n",
        )
        .unwrap();
        let names: Vec<_> = web.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-frame-options", "strict-transport-security"]);
        let err = refusal("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(err.contains("deny or sameorigin"), "{err}");
    }

    proptest! {
        /// Text made of the file's own words and YAML's punctuation (anchors and aliases
        /// included): a decision, never a panic, and an error is one line.
        #[test]
        fn fuzz_web_config(
            text in "(tls_server_config|basic_auth_users|http_server_config|headers|cert_file|\
                      key: |client_auth_type: |X-Frame-Options: |min_version: TLS1|  |: |\n|- |\
                      \\[|\\]|\\{|\\}|'|\"|&a |\\*a|!!str |[ -~]){0,60}"
        ) {
            if let Err(err) = parse(&text, Path::new("/nonexistent")) {
                prop_assert!(!format!("{err:#}").contains('\n'), "{err:#}");
            }
        }
    }
}
