//! Basic authentication against the web config's bcrypt hashes. bcrypt is slow on purpose (tens of
//! milliseconds at the usual cost), so it runs off the daemon's event loop, one check at a time
//! (a flood of wrong passwords costs one core at most, never the tracing), and a success is
//! remembered: Prometheus sends the same credentials every scrape.
use std::{
    collections::HashSet,
    hash::BuildHasher as _,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use hyper::header::HeaderValue;
use tokio::sync::Semaphore;

use super::web_config::Web;

/// Successes remembered at most; past it the memory starts afresh.
const REMEMBERED: usize = 64;

pub(crate) struct BasicAuth {
    /// Keyed hashes of (user, password, stored hash) that passed: the passwords themselves are
    /// not kept, and a changed hash in the file no longer matches.
    successes: Mutex<HashSet<u64>>,
    key: std::collections::hash_map::RandomState,
    one_at_a_time: Semaphore,
}

impl BasicAuth {
    pub(crate) fn new() -> BasicAuth {
        BasicAuth {
            successes: Mutex::new(HashSet::new()),
            key: Default::default(),
            one_at_a_time: Semaphore::new(1),
        }
    }

    /// Whether a request for `path` with this `Authorization` header may be answered.
    pub(crate) async fn allows(
        &self,
        web: &Arc<Web>,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> bool {
        if web.users.is_empty() || web.excluded_paths.iter().any(|p| p == path) {
            return true;
        }
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        // An unknown user is checked against a decoy hash of the same cost, so the answer takes
        // as long as for a known one.
        let (hash, known) = match web.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => match &web.decoy_hash {
                Some(decoy) => (decoy.clone(), false),
                None => return false,
            },
        };
        let key = self.key.hash_one((&user, &password, &hash));
        if known && self.remembered(key) {
            return true;
        }
        let Ok(_permit) = self.one_at_a_time.acquire().await else {
            return false;
        };
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if matches && known {
            self.remember(key);
        }
        matches && known
    }

    fn remembered(&self, key: u64) -> bool {
        self.successes
            .lock()
            .map(|set| set.contains(&key))
            .unwrap_or(false)
    }

    fn remember(&self, key: u64) {
        if let Ok(mut set) = self.successes.lock() {
            if set.len() >= REMEMBERED {
                set.clear();
            }
            set.insert(key);
        }
    }
}

/// User and password of a `Basic` header.
fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn web(users: &[(&str, &str)]) -> Arc<Web> {
        let users: BTreeMap<String, String> = users
            .iter()
            .map(|(user, password)| (user.to_string(), bcrypt::hash(password, 4).unwrap()))
            .collect();
        Arc::new(Web {
            decoy_hash: Some(bcrypt::hash("decoy", 4).unwrap()),
            users,
            excluded_paths: vec!["/".to_owned()],
            ..Web::default()
        })
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[tokio::test]
    async fn checks_users_and_passwords() {
        let auth = BasicAuth::new();
        let web = web(&[("prometheus", "s3cret:with colon")]);
        let right = basic("prometheus", "s3cret:with colon");
        assert!(auth.allows(&web, "/metrics", Some(&right)).await);
        assert!(
            auth.allows(&web, "/metrics", Some(&right)).await,
            "remembered"
        );
        for wrong in [
            basic("prometheus", "s3cret"),
            basic("grafana", "s3cret:with colon"),
            basic("", ""),
            HeaderValue::from_static("Bearer abc"),
            HeaderValue::from_static("Basic !!!"),
        ] {
            assert!(
                !auth.allows(&web, "/metrics", Some(&wrong)).await,
                "{wrong:?}"
            );
        }
        assert!(!auth.allows(&web, "/metrics", None).await);
        assert!(auth.allows(&web, "/", None).await, "excluded path");
        assert!(
            auth.allows(&Arc::new(Web::default()), "/metrics", None)
                .await
        );
    }

    proptest! {
        /// Any header value: a decision, never a panic, and never a success for a header that
        /// does not carry the one user's password.
        #[test]
        fn fuzz_basic_credentials(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(header) = HeaderValue::from_bytes(&bytes)
                && let Some((user, password)) = credentials(&header)
            {
                prop_assert!(!user.contains(':'));
                let again = basic(&user, &password);
                prop_assert_eq!(credentials(&again), Some((user, password)));
            }
        }
    }
}
