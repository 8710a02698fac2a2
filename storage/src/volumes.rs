//! The tape-volume inventory: volume id → a [`crate::codec`] volume record,
//! in id order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use model::volume::{Location, Volume, VolumeId};

use crate::codec::{decode_volume as decode, encode_volume};
use crate::trees::TreeId;
use crate::{Result, StoreCore, page};

#[derive(Clone)]
pub struct VolumeStore {
    shared: Arc<StoreCore>,
    /// Volumes stored: counted once at open, then kept up to date, because
    /// sled's own `len` walks the whole tree.
    count: Arc<AtomicUsize>,
}

impl VolumeStore {
    pub(crate) fn new(shared: Arc<StoreCore>) -> Result<Self> {
        let count = shared.with(|trees| crate::trees::count(&trees.volumes))?;
        Ok(VolumeStore {
            shared,
            count: Arc::new(AtomicUsize::new(count)),
        })
    }

    pub fn put(&self, volume: &Volume) -> Result<()> {
        let value = encode_volume(volume);
        let key = volume.spec.id.as_str().as_bytes();
        let old = self.shared.write(TreeId::Volumes, key, Some(value))?;
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// How many volumes are stored.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &VolumeId) -> Result<bool> {
        self.shared
            .with(|trees| Ok(trees.volumes.contains_key(id.as_str())?))
    }

    pub fn get(&self, id: &VolumeId) -> Result<Option<Volume>> {
        let value = self
            .shared
            .with(|trees| Ok(trees.volumes.get(id.as_str())?))?;
        value
            .map(|v| decode(id.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Moves a volume; `None` if there is no such volume. Atomic against
    /// concurrent puts and moves of the same volume.
    pub fn move_to(
        &self,
        id: &VolumeId,
        location: Location,
        now_ms: u64,
    ) -> Result<Option<Volume>> {
        let mut failure = None;
        let updated = self
            .shared
            .update(TreeId::Volumes, id.as_str().as_bytes(), |old| {
                let mut volume = match decode(id.as_str().as_bytes(), old?) {
                    Ok(volume) => volume,
                    Err(error) => {
                        failure = Some(error);
                        return old.map(<[u8]>::to_vec);
                    }
                };
                volume.spec.location = location;
                volume.updated_at_ms = now_ms;
                Some(encode_volume(&volume))
            })?;
        if let Some(error) = failure {
            return Err(error);
        }
        updated
            .map(|v| decode(id.as_str().as_bytes(), &v))
            .transpose()
    }

    /// Up to `limit` volumes after `after`, and the id to continue from.
    pub fn list(
        &self,
        after: Option<&VolumeId>,
        limit: usize,
    ) -> Result<(Vec<Volume>, Option<VolumeId>)> {
        let after = after.map(|id| id.as_str().as_bytes().to_vec());
        self.shared
            .with(|trees| page(&trees.volumes, after, limit, decode, |v: &Volume| v.spec.id))
    }
}

#[cfg(test)]
mod tests {
    use model::volume::{VolumeSpec, VolumeStatus};

    use crate::{Store, StoreOptions};

    use super::*;

    fn volume(id: &str, location: &str) -> Volume {
        Volume {
            spec: VolumeSpec {
                id: id.parse().unwrap(),
                media_type: "LTO-9".parse().unwrap(),
                location: location.parse().unwrap(),
                status: VolumeStatus::Active,
            },
            updated_at_ms: 1,
        }
    }

    #[test]
    fn put_get_move_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let volumes = store.volumes();
        for id in ["A3", "A1", "A2", "A1"] {
            volumes.put(&volume(id, "library")).unwrap();
        }
        assert_eq!(volumes.len(), 3, "a replaced volume is counted once");
        assert!(volumes.contains(&"A2".parse().unwrap()).unwrap());
        let a1: VolumeId = "A1".parse().unwrap();
        assert_eq!(volumes.get(&a1).unwrap(), Some(volume("A1", "library")));
        let moved = volumes
            .move_to(&a1, "vault".parse().unwrap(), 99)
            .unwrap()
            .unwrap();
        assert_eq!(moved.spec.location.as_str(), "vault");
        assert_eq!(moved.updated_at_ms, 99);
        assert_eq!(volumes.get(&a1).unwrap(), Some(moved));
        assert!(
            volumes
                .move_to(&"nope".parse().unwrap(), "x".parse().unwrap(), 1)
                .unwrap()
                .is_none()
        );

        let (first, next) = volumes.list(None, 2).unwrap();
        let ids: Vec<_> = first.iter().map(|v| v.spec.id.as_str()).collect();
        assert_eq!(ids, ["A1", "A2"]);
        let (rest, next) = volumes.list(next.as_ref(), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].spec.id.as_str(), "A3");
        assert_eq!(next, None);
    }

    #[test]
    fn writes_survive_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            store.volumes().put(&volume("B1", "shelf")).unwrap();
            assert!(store.unflushed_writes() >= 1);
            store.flush().unwrap();
            assert!(store.flush_count() >= 1);
            assert_eq!(store.unflushed_writes(), 0);
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert!(
            store
                .volumes()
                .get(&"B1".parse().unwrap())
                .unwrap()
                .is_some()
        );
    }
}
