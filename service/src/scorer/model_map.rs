//! Per-device values by model id, in a vector sorted by id.
//!
//! A device has one model (production) and, while candidates run in shadow, one or two
//! more: a `BTreeMap` would allocate a node for eleven entries per device (about 2 KB
//! of scoring state each, measured by `benches/memory.rs`), a boxed slice holds what
//! there is (rebuilt when a model comes or goes, which is rare; a `Vec` would make room
//! for four at the first insert, and keep its capacity beside its length). Production's
//! id, which every device has, is not copied per device.

use fleetwatch_protocol::ModelId;

/// Values by model id, sorted by id (iteration order as a `BTreeMap`'s).
#[derive(Clone, Debug)]
pub struct ModelMap<V> {
    entries: Box<[(ModelId, V)]>,
}

impl<V> Default for ModelMap<V> {
    fn default() -> Self {
        Self {
            entries: Box::default(),
        }
    }
}

impl<V> ModelMap<V> {
    fn position(&self, model_id: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(id, _)| id.as_str().cmp(model_id))
    }

    pub fn get(&self, model_id: &str) -> Option<&V> {
        let at = self.position(model_id).ok()?;
        Some(&self.entries[at].1)
    }

    pub fn get_mut(&mut self, model_id: &str) -> Option<&mut V> {
        let at = self.position(model_id).ok()?;
        Some(&mut self.entries[at].1)
    }

    pub fn contains_key(&self, model_id: &str) -> bool {
        self.position(model_id).is_ok()
    }

    /// Set the value of `model_id`, replacing the one it had.
    pub fn insert(&mut self, model_id: String, value: V) {
        match self.position(&model_id) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => self.change(|entries| entries.insert(at, (ModelId::new(model_id), value))),
        }
    }

    pub fn remove(&mut self, model_id: &str) -> Option<V> {
        let at = self.position(model_id).ok()?;
        Some(self.change(|entries| entries.remove(at)).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.change(|entries| entries.retain_mut(|(id, value)| keep(id, value)));
    }

    /// Change the entries as a `Vec`, then keep exactly as many as there are.
    fn change<R>(&mut self, change: impl FnOnce(&mut Vec<(ModelId, V)>) -> R) -> R {
        let mut entries = std::mem::take(&mut self.entries).into_vec();
        let result = change(&mut entries);
        self.entries = entries.into_boxed_slice();
        result
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(id, value)| (id.as_str(), value))
    }
}

impl<V: Default> ModelMap<V> {
    /// The value of `model_id`, a default one put in first when there is none.
    pub fn get_or_default(&mut self, model_id: &str) -> &mut V {
        let at = match self.position(model_id) {
            Ok(at) => at,
            Err(at) => {
                self.change(|entries| entries.insert(at, (ModelId::new(model_id), V::default())));
                at
            }
        };
        &mut self.entries[at].1
    }
}

#[cfg(test)]
mod tests {
    use super::ModelMap;

    #[test]
    fn values_are_kept_by_id_in_id_order() {
        let mut map = ModelMap::default();
        map.insert("production".to_owned(), 1);
        map.insert("cand-2".to_owned(), 2);
        map.insert("cand-1".to_owned(), 3);
        map.insert("production".to_owned(), 4);
        *map.get_or_default("cand-3") += 5;
        *map.get_or_default("cand-1") += 10;
        let ids: Vec<(&str, &i32)> = map.iter().collect();
        assert_eq!(
            ids,
            [
                ("cand-1", &13),
                ("cand-2", &2),
                ("cand-3", &5),
                ("production", &4),
            ]
        );
        assert_eq!(map.remove("cand-2"), Some(2));
        assert!(!map.contains_key("cand-2") && map.get("cand-2").is_none());
        map.retain(|id, value| id != "cand-3" && *value > 0);
        assert_eq!(map.get("production"), Some(&4));
        assert_eq!(map.get_mut("cand-1").copied(), Some(13));
        map.retain(|_, _| false);
        assert!(map.is_empty());
    }
}
