//! Per-metric state of a device, with the metric names shared between devices.
//!
//! A fleet's devices send the same metrics, and every role keeps state per metric of
//! every device: a name kept beside each metric's state costs 16 bytes and an allocation
//! per metric, device and role (about 180 bytes per device at 8 metrics). [`Named`]
//! keeps the values in a boxed slice and the names in one list shared by every device
//! that has the same ones ([`MetricNames`]).

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device's metric names, sorted: one copy per distinct list in the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricNames(Arc<[Box<str>]>);

/// Every list in use, and some no longer in use until the next sweep (a sweep runs when a
/// new list would pass `sweep_at`): at most twice the most lists in use at a sweep, and
/// at least [`KnownNames::MIN_SWEEP`]. A list replaced by a longer one leaves at once
/// ([`MetricNames::release`]).
struct KnownNames {
    lists: HashSet<Arc<[Box<str>]>>,
    /// Drop the lists nobody else holds once this many are known.
    sweep_at: usize,
}

impl KnownNames {
    const MIN_SWEEP: usize = 64;
}

fn known() -> &'static Mutex<KnownNames> {
    static KNOWN: OnceLock<Mutex<KnownNames>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        Mutex::new(KnownNames {
            lists: HashSet::new(),
            sweep_at: KnownNames::MIN_SWEEP,
        })
    })
}

impl MetricNames {
    /// The shared copy of `names` (sorted by the caller).
    fn shared(names: Vec<Box<str>>) -> Self {
        // Nothing a holder of the lock does can leave the set half changed.
        let mut known = known()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(list) = known.lists.get(&names[..]) {
            return Self(list.clone());
        }
        if known.lists.len() >= known.sweep_at {
            known.lists.retain(|list| Arc::strong_count(list) > 1);
            known.sweep_at = (2 * known.lists.len()).max(KnownNames::MIN_SWEEP);
        }
        let list: Arc<[Box<str>]> = names.into();
        known.lists.insert(list.clone());
        Self(list)
    }

    /// Drop `self`, and its list from the known ones if nobody else holds it: a device
    /// that learns its metrics one at a time leaves no list behind per metric.
    fn release(self) {
        let mut known = known()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Under the lock nobody can take a copy from the table, and a count of two is
        // this one and the table's (if the table's entry is this list, not an equal one).
        let the_tables = known
            .lists
            .get(&self.0)
            .is_some_and(|l| Arc::ptr_eq(l, &self.0));
        if the_tables && Arc::strong_count(&self.0) == 2 {
            known.lists.remove(&self.0);
        }
    }

    /// Where `name` is (or would go); `hint` is where it usually is.
    #[inline]
    pub fn position(&self, name: &str, hint: usize) -> Result<usize, usize> {
        if self.0.get(hint).is_some_and(|n| **n == *name) {
            return Ok(hint);
        }
        self.0.binary_search_by(|n| (**n).cmp(name))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name at `index`.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(|name| &**name)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(|name| &**name)
    }
}

impl Default for MetricNames {
    /// No names: one list for the process, without the table's lock.
    fn default() -> Self {
        static NONE: OnceLock<MetricNames> = OnceLock::new();
        NONE.get_or_init(|| Self(Arc::from(Vec::new()))).clone()
    }
}

impl std::ops::Index<usize> for MetricNames {
    type Output = str;

    fn index(&self, index: usize) -> &str {
        &self.0[index]
    }
}

/// A value per metric, in the order of the (sorted) names. (A boxed slice, not a `Vec`:
/// 8 bytes less, and a device's metrics change rarely.)
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T> {
    names: MetricNames,
    values: Box<[T]>,
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self {
            names: MetricNames::default(),
            values: Box::default(),
        }
    }
}

impl<T> Named<T> {
    pub fn names(&self) -> &MetricNames {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Where `name` is (or would go); `hint` is where it usually is.
    #[inline]
    pub fn position(&self, name: &str, hint: usize) -> Result<usize, usize> {
        self.names.position(name, hint)
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        let index = self.position(name, 0).ok()?;
        Some(&self.values[index])
    }

    /// Add `name` with `value` at `index`, where [`Named::position`] said it goes.
    pub fn insert(&mut self, index: usize, name: &str, value: T) {
        debug_assert_eq!(
            self.position(name, index),
            Err(index),
            "{name} goes elsewhere"
        );
        let mut names: Vec<Box<str>> = self.names.0.to_vec();
        names.insert(index, name.into());
        std::mem::replace(&mut self.names, MetricNames::shared(names)).release();
        let mut values = std::mem::take(&mut self.values).into_vec();
        values.insert(index, value);
        self.values = values.into_boxed_slice();
    }

    pub fn values(&self) -> &[T] {
        &self.values
    }

    pub fn values_mut(&mut self) -> &mut [T] {
        &mut self.values
    }

    /// The same names with a value made of each of these.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Named<U> {
        Named {
            names: self.names.clone(),
            values: self.values.iter().map(f).collect(),
        }
    }

    /// Names and values, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &T)> + '_ {
        self.names.iter().zip(&self.values)
    }

    /// From pairs sorted by name, each name once (checked: `None` otherwise).
    pub fn from_sorted(pairs: Vec<(Box<str>, T)>) -> Option<Self> {
        if !pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            return None;
        }
        let (names, values): (Vec<Box<str>>, Vec<T>) = pairs.into_iter().unzip();
        Some(Self {
            names: MetricNames::shared(names),
            values: values.into_boxed_slice(),
        })
    }
}

impl<T> std::ops::Index<usize> for Named<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        &self.values[index]
    }
}

impl<T> std::ops::IndexMut<usize> for Named<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        &mut self.values[index]
    }
}

/// As a sequence of `(name, value)` pairs: the form a `Vec<(Box<str>, T)>` had.
impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Pairs<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("(name, value) pairs sorted by name")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The length comes from outside: no more room than a few metrics ahead.
                let mut pairs = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = seq.next_element::<(Box<str>, T)>()? {
                    pairs.push(pair);
                }
                Named::from_sorted(pairs).ok_or_else(|| {
                    serde::de::Error::custom("metric names not sorted, or one twice")
                })
            }
        }

        d.deserialize_seq(Pairs(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_with_the_same_metrics_share_one_list_of_names() {
        let mut a = Named::default();
        let mut b = Named::default();
        for (named, order) in [(&mut a, ["t", "p", "h"]), (&mut b, ["h", "t", "p"])] {
            for name in order {
                let at = named.position(name, 0).unwrap_err();
                named.insert(at, name, name.len());
            }
        }
        assert_eq!(a.names().iter().collect::<Vec<_>>(), ["h", "p", "t"]);
        assert!(Arc::ptr_eq(&a.names().0, &b.names().0));
        // The lists on the way ([t], [p, t], [h, t], ...) are gone.
        let known = known().lock().unwrap();
        for gone in [&["t"][..], &["p", "t"], &["h", "t"]] {
            let gone: Vec<Box<str>> = gone.iter().map(|&n| n.into()).collect();
            assert!(!known.lists.contains(&gone[..]), "{gone:?}");
        }
        drop(known);
        assert_eq!(a.get("p"), Some(&1));
        assert_eq!((a.position("t", 2), a.position("q", 0)), (Ok(2), Err(2)));
    }

    #[test]
    fn reads_and_writes_the_pairs_it_stands_for() {
        let pairs: Vec<(Box<str>, u32)> = vec![("a".into(), 1), ("b".into(), 2)];
        let named = Named::from_sorted(pairs.clone()).unwrap();
        let bytes = postcard::to_allocvec(&named).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&pairs).unwrap());
        assert_eq!(postcard::from_bytes::<Named<u32>>(&bytes).unwrap(), named);
        let unsorted: Vec<(Box<str>, u32)> = vec![("b".into(), 2), ("a".into(), 1)];
        let bytes = postcard::to_allocvec(&unsorted).unwrap();
        assert!(postcard::from_bytes::<Named<u32>>(&bytes).is_err());
    }

    #[test]
    fn lists_nobody_holds_are_dropped() {
        for n in 0..10 * KnownNames::MIN_SWEEP {
            let mut named = Named::default();
            named.insert(0, &format!("gone-{n}"), ());
        }
        let held = Named::from_sorted(vec![("kept".into(), ())]).unwrap();
        let known = known().lock().unwrap();
        // Other tests' lists may be alive meanwhile: a few.
        assert!(
            known.lists.len() <= 2 * KnownNames::MIN_SWEEP,
            "{}",
            known.lists.len()
        );
        assert!(known.lists.contains(&held.names().0));
    }
}
