//! The core's port to the kernel's record maps: what reconciliation and the lingering check read
//! and write, as typed tables. The daemon implements it over the maps' descriptors; the core's
//! tests over plain hash maps.
use anyhow::Result;
use tracer_common::{SockRecord, Tuple, TwRecord, Watch};

use crate::source::batch::Write;

/// One of the kernel's maps. Each write and delete says which entries it changed: the programs
/// write the same maps meanwhile.
pub(crate) trait Table<K, V> {
    /// Every entry.
    fn all(&self) -> Result<Vec<(K, V)>>;
    /// The value at `key` as it is now.
    fn get(&self, key: &K) -> Result<Option<V>>;
    /// Writes the entries `mode` allows; returns which were written.
    fn write(&self, entries: &[(K, V)], mode: Write) -> Result<Vec<bool>>;
    /// Deletes keys; returns which were there.
    fn delete(&self, keys: &[K]) -> Result<Vec<bool>>;
}

/// The kernel's records and the indexes that follow them.
pub(crate) trait RecordStore {
    /// Records of full sockets, by cookie.
    fn sockets(&self) -> impl Table<u64, SockRecord> + '_;
    /// Records of timewait sockets, by address.
    fn timewaits(&self) -> impl Table<Tuple, TwRecord> + '_;
    /// The index of full sockets in watched states, by cookie.
    fn watched(&self) -> impl Table<u64, Watch> + '_;
    /// The index of timewait sockets lingering in FIN-WAIT-2 (the value is unused).
    fn lingering(&self) -> impl Table<Tuple, u8> + '_;
}

/// Writes `fixed` over the value at `key` if it is still `was` (else the programs changed it since
/// it was read, and theirs wins).
pub(crate) fn write_if_unchanged<K: Copy, V: Copy + PartialEq>(
    table: &impl Table<K, V>,
    key: &K,
    fixed: &V,
    was: &V,
) -> Result<bool> {
    if table.get(key)?.as_ref() != Some(was) {
        return Ok(false);
    }
    Ok(table
        .write(&[(*key, *fixed)], Write::Existing)?
        .contains(&true))
}

/// The record maps as plain hash maps, with the kernel's write modes.
#[cfg(test)]
pub(crate) mod fake {
    use std::{cell::RefCell, collections::HashMap, hash::Hash};

    use super::*;

    pub(crate) struct FakeTable<K, V>(pub(crate) RefCell<HashMap<K, V>>);

    impl<K, V> Default for FakeTable<K, V> {
        fn default() -> Self {
            Self(RefCell::new(HashMap::new()))
        }
    }

    impl<K: Copy + Eq + Hash, V: Copy> Table<K, V> for &FakeTable<K, V> {
        fn all(&self) -> Result<Vec<(K, V)>> {
            Ok(self.0.borrow().iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn get(&self, key: &K) -> Result<Option<V>> {
            Ok(self.0.borrow().get(key).copied())
        }

        fn write(&self, entries: &[(K, V)], mode: Write) -> Result<Vec<bool>> {
            let mut map = self.0.borrow_mut();
            Ok(entries
                .iter()
                .map(|(key, value)| {
                    let allowed = match mode {
                        Write::Any => true,
                        Write::New => !map.contains_key(key),
                        Write::Existing => map.contains_key(key),
                    };
                    if allowed {
                        map.insert(*key, *value);
                    }
                    allowed
                })
                .collect())
        }

        fn delete(&self, keys: &[K]) -> Result<Vec<bool>> {
            let mut map = self.0.borrow_mut();
            Ok(keys.iter().map(|key| map.remove(key).is_some()).collect())
        }
    }

    #[derive(Default)]
    pub(crate) struct FakeStore {
        pub(crate) sockets: FakeTable<u64, SockRecord>,
        pub(crate) timewaits: FakeTable<Tuple, TwRecord>,
        pub(crate) watched: FakeTable<u64, Watch>,
        pub(crate) lingering: FakeTable<Tuple, u8>,
    }

    impl RecordStore for FakeStore {
        fn sockets(&self) -> impl Table<u64, SockRecord> + '_ {
            &self.sockets
        }

        fn timewaits(&self) -> impl Table<Tuple, TwRecord> + '_ {
            &self.timewaits
        }

        fn watched(&self) -> impl Table<u64, Watch> + '_ {
            &self.watched
        }

        fn lingering(&self) -> impl Table<Tuple, u8> + '_ {
            &self.lingering
        }
    }
}
