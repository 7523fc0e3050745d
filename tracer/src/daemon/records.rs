//! The core's port to the kernel's record maps ([`RecordStore`]), over their descriptors: each
//! map with the key and value types the programs write to it.
use std::marker::PhantomData;

use anyhow::Result;
use aya::Pod;
use tracer_common::{SockRecord, Tuple, TwRecord, Watch};

use crate::{
    core::port::{RecordStore, Table},
    source::{
        batch::Write,
        kernel_maps::{RecordMap, RecordMaps},
    },
};

/// One record map, typed.
struct KernelTable<'a, K, V> {
    maps: &'a RecordMaps,
    map: RecordMap,
    entries: PhantomData<fn() -> (K, V)>,
}

impl<'a, K, V> KernelTable<'a, K, V> {
    fn new(maps: &'a RecordMaps, map: RecordMap) -> Self {
        Self {
            maps,
            map,
            entries: PhantomData,
        }
    }
}

impl<K: Pod, V: Pod> Table<K, V> for KernelTable<'_, K, V> {
    fn all(&self) -> Result<Vec<(K, V)>> {
        self.maps.all(self.map)
    }

    fn get(&self, key: &K) -> Result<Option<V>> {
        self.maps.get(self.map, key)
    }

    fn write(&self, entries: &[(K, V)], mode: Write) -> Result<Vec<bool>> {
        self.maps.write(self.map, entries, mode)
    }

    fn delete(&self, keys: &[K]) -> Result<Vec<bool>> {
        self.maps.delete(self.map, keys)
    }
}

impl RecordStore for RecordMaps {
    fn sockets(&self) -> impl Table<u64, SockRecord> + '_ {
        KernelTable::new(self, RecordMap::Sockets)
    }

    fn timewaits(&self) -> impl Table<Tuple, TwRecord> + '_ {
        KernelTable::new(self, RecordMap::Timewait)
    }

    fn watched(&self) -> impl Table<u64, Watch> + '_ {
        KernelTable::new(self, RecordMap::Watched)
    }

    fn lingering(&self) -> impl Table<Tuple, u8> + '_ {
        KernelTable::new(self, RecordMap::Lingering)
    }
}
