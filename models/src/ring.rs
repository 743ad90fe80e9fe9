//! Fixed-capacity rings of the last few values: exactly the memory they need (a
//! `VecDeque` rounds its buffer up to a power of two), which matters at a million devices.
//! [`Rings`] keeps several in one buffer; [`Ring`] is one ring's wire form in the
//! trainer's state (and the behaviour `Rings` is tested against).

use serde::{Deserialize, Serialize};

/// One ring as the trainer's state holds it: its buffer (as long as its capacity, empty
/// before its first value), the index of its oldest value, and how many it holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Ring<T> {
    buffer: Box<[T]>,
    /// Index of the oldest value.
    head: u32,
    len: u32,
}

/// The behaviour [`Rings`] keeps, ring by ring (its tests compare the two).
#[cfg(test)]
impl<T: Copy + Default> Ring<T> {
    /// Append `value`, dropping the oldest once `capacity` values are held. The capacity
    /// is fixed by the first push (a configuration does not change under a ring).
    pub fn push(&mut self, value: T, capacity: usize) {
        if capacity == 0 {
            *self = Self::default();
            return;
        }
        if self.buffer.len() != capacity {
            // First use (or a changed configuration): start over at the right size.
            self.buffer = vec![T::default(); capacity].into_boxed_slice();
            self.head = 0;
            self.len = 0;
        }
        let capacity = self.buffer.len() as u32;
        if self.len < capacity {
            self.buffer[((self.head + self.len) % capacity) as usize] = value;
            self.len += 1;
        } else {
            self.buffer[self.head as usize] = value;
            self.head = (self.head + 1) % capacity;
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }
}

impl<T: Copy + Default> Ring<T> {
    /// A ring of `capacity` holding `values` (oldest first, at most `capacity` of them).
    pub fn holding(capacity: usize, values: impl IntoIterator<Item = T>) -> Self {
        let mut buffer = vec![T::default(); capacity];
        let mut len = 0;
        for (slot, value) in buffer.iter_mut().zip(values) {
            *slot = value;
            len += 1;
        }
        Self {
            buffer: buffer.into_boxed_slice(),
            head: 0,
            len,
        }
    }

    /// Refuses a ring whose start or length does not fit its buffer, or whose buffer holds
    /// more than 255 values (a ring read from the wire is checked before use).
    pub fn check(&self) -> Result<(), &'static str> {
        let cap = self.buffer.len();
        let fits = cap <= usize::from(u8::MAX)
            && self.len as usize <= cap
            && ((self.head as usize) < cap || (cap == 0 && self.head == 0));
        if fits {
            Ok(())
        } else {
            Err("a ring whose start or length does not fit its buffer, or longer than 255")
        }
    }

    pub fn capacity(&self) -> usize {
        self.buffer.len()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        let (head, len) = (self.head as usize, self.len as usize);
        let first = &self.buffer[head..(head + len).min(self.buffer.len())];
        let wrapped = &self.buffer[..len - first.len()];
        first.iter().chain(wrapped)
    }
}

/// `N` rings of the last few `f32` values in one buffer: each ring behaves as a
/// [`Ring`] (and is written as one: [`Rings::wire`]), but the rings share one buffer and
/// keep their capacity, start and length in a few bytes (where each begins follows). The
/// buffer is kept inside the `Rings` while the capacities add up to at most `INLINE`
/// values (the default configuration's), on the heap beyond. A metric's context is kept by the
/// trainer and the scorer alike, for every metric of every device: three [`Ring`]s cost
/// 72 bytes beside their buffers and three allocations; `Rings<3, 15>` with the default
/// configuration 80 and none.
#[derive(Clone, Debug)]
pub(crate) struct Rings<const N: usize, const INLINE: usize> {
    /// Ring after ring.
    values: Buffer<INLINE>,
    /// Capacity (0 until the ring's first push; at most 255).
    caps: [u8; N],
    /// Index of the oldest value.
    heads: [u8; N],
    lens: [u8; N],
}

/// The values of [`Rings`]: inside it while they fit, on the heap when not.
#[derive(Clone, Debug)]
enum Buffer<const INLINE: usize> {
    Inline([f32; INLINE]),
    Heap(Box<[f32]>),
}

impl<const INLINE: usize> Buffer<INLINE> {
    /// Room for `len` values, all 0.
    fn zeroed(len: usize) -> Self {
        if len <= INLINE {
            Self::Inline([0.0; INLINE])
        } else {
            Self::Heap(vec![0.0; len].into_boxed_slice())
        }
    }

    #[inline]
    fn as_slice(&self) -> &[f32] {
        match self {
            Self::Inline(values) => values,
            Self::Heap(values) => values,
        }
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [f32] {
        match self {
            Self::Inline(values) => values,
            Self::Heap(values) => values,
        }
    }
}

impl<const N: usize, const INLINE: usize> Default for Rings<N, INLINE> {
    fn default() -> Self {
        Self {
            values: Buffer::Inline([0.0; INLINE]),
            caps: [0; N],
            heads: [0; N],
            lens: [0; N],
        }
    }
}

impl<const N: usize, const INLINE: usize> Rings<N, INLINE> {
    /// Where ring `r` begins: after the rings before it (not kept: 2 bytes a ring, and
    /// the relation's two rings then fit 8 bytes less).
    #[inline]
    fn begin(&self, r: usize) -> usize {
        self.caps[..r].iter().map(|&cap| usize::from(cap)).sum()
    }

    /// Ring `r`'s buffer: `caps[r]` values.
    #[inline]
    fn buffer(&self, r: usize) -> &[f32] {
        let begin = self.begin(r);
        &self.values.as_slice()[begin..begin + usize::from(self.caps[r])]
    }

    /// Give ring `r` room for `cap` values, empty, keeping the others.
    fn relayout(&mut self, r: usize, cap: u8) {
        let mut caps = self.caps;
        caps[r] = cap;
        let end = caps.iter().map(|&cap| usize::from(cap)).sum();
        let mut values = Buffer::zeroed(end);
        let (mut old, mut new) = (0, 0);
        for (s, (&was, &now)) in self.caps.iter().zip(&caps).enumerate() {
            let (was, now) = (usize::from(was), usize::from(now));
            if s != r {
                let from = &self.values.as_slice()[old..old + was];
                values.as_mut_slice()[new..new + was].copy_from_slice(from);
            }
            old += was;
            new += now;
        }
        self.values = values;
        self.caps = caps;
        self.heads[r] = 0;
        self.lens[r] = 0;
    }

    /// Append `value` to ring `r`, dropping its oldest once `capacity` values are held,
    /// as [`Ring::push`] does (a capacity above 255, which no valid configuration asks
    /// for, holds 255). A capacity of 0 empties the ring: a configuration that turned it
    /// off leaves nothing behind to come back later.
    #[inline]
    pub fn push(&mut self, r: usize, value: f32, capacity: usize) {
        if capacity == 0 {
            if self.caps[r] != 0 {
                self.relayout(r, 0);
            }
            return;
        }
        let cap = u8::try_from(capacity).unwrap_or(u8::MAX);
        if self.caps[r] != cap {
            // First use (or a changed configuration): start over at the right size.
            self.relayout(r, cap);
        }
        let (head, len) = (self.heads[r], self.lens[r]);
        let slot = if len < cap {
            self.lens[r] = len + 1;
            let slot = usize::from(head) + usize::from(len);
            slot - if slot >= usize::from(cap) {
                usize::from(cap)
            } else {
                0
            }
        } else {
            self.heads[r] = if head + 1 == cap { 0 } else { head + 1 };
            usize::from(head)
        };
        let begin = self.begin(r);
        self.values.as_mut_slice()[begin + slot] = value;
    }

    pub fn len(&self, r: usize) -> usize {
        usize::from(self.lens[r])
    }

    pub fn capacity(&self, r: usize) -> usize {
        usize::from(self.caps[r])
    }

    /// Ring `r`'s values, oldest first.
    pub fn iter(&self, r: usize) -> impl DoubleEndedIterator<Item = f32> + '_ {
        let buffer = self.buffer(r);
        let (head, len) = (usize::from(self.heads[r]), usize::from(self.lens[r]));
        let first = &buffer[head..(head + len).min(buffer.len())];
        let wrapped = &buffer[..len - first.len()];
        first.iter().chain(wrapped).copied()
    }

    /// Ring `r` as the [`Ring`] it stands for, for serde.
    pub fn wire(&self, r: usize) -> RingWire<'_> {
        RingWire {
            buffer: self.buffer(r),
            head: u32::from(self.heads[r]),
            len: u32::from(self.lens[r]),
        }
    }

    /// Make ring `r` the `ring` read from the wire, once [`Ring::check`]ed.
    pub fn restore(&mut self, r: usize, ring: &Ring<f32>) -> Result<(), &'static str> {
        ring.check()?;
        if ring.buffer.is_empty() {
            return Ok(());
        }
        self.relayout(r, ring.buffer.len() as u8);
        let begin = self.begin(r);
        self.values.as_mut_slice()[begin..begin + ring.buffer.len()].copy_from_slice(&ring.buffer);
        self.heads[r] = ring.head as u8;
        self.lens[r] = ring.len as u8;
        Ok(())
    }
}

/// One of [`Rings`]' rings, serialized as the [`Ring`] it stands for (buffer, start,
/// length): the trainer's state is the same bytes either way.
#[derive(Serialize)]
#[serde(rename = "Ring")]
pub(crate) struct RingWire<'a> {
    buffer: &'a [f32],
    head: u32,
    len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_values_in_order() {
        let mut ring = Ring::default();
        for v in 1..=7 {
            ring.push(v, 3);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<i32>>(), vec![5, 6, 7]);
        assert_eq!(ring.len(), 3);
        let held = Ring::holding(4, [5, 6, 7]);
        assert!(held.check().is_ok());
        assert_eq!((held.capacity(), held.len()), (4, 3));
        assert_eq!(held.iter().copied().collect::<Vec<i32>>(), vec![5, 6, 7]);
    }

    /// A `Rings` pushed as three `Ring`s gives their values and their wire form, through
    /// wraps, a capacity changed under it, and a ring never pushed; a restored one is
    /// the same.
    #[test]
    fn rings_behave_and_serialize_as_rings() {
        // On the heap (the capacities add up to more than 4) and inside (up to 16).
        rings_behave_as_rings::<4>();
        rings_behave_as_rings::<16>();
    }

    fn rings_behave_as_rings<const INLINE: usize>() {
        let mut rings = Rings::<3, INLINE>::default();
        let (mut a, mut b) = (Ring::<f32>::default(), Ring::<f32>::default());
        let c = Ring::<f32>::default();
        let wire = |rings: &Rings<3, INLINE>| {
            let parts = (rings.wire(0), rings.wire(1), rings.wire(2));
            postcard::to_allocvec(&parts).unwrap()
        };
        for v in 0..23 {
            let cap_a = if v < 11 { 5 } else { 3 };
            a.push(v as f32 * 0.5, cap_a);
            rings.push(0, v as f32 * 0.5, cap_a);
            if v % 3 != 0 {
                b.push(v as f32 / 7.0, 6);
                rings.push(1, v as f32 / 7.0, 6);
            }
            let got: Vec<f32> = rings.iter(0).collect();
            assert_eq!(got, a.iter().copied().collect::<Vec<_>>());
            let got: Vec<f32> = rings.iter(1).rev().collect();
            assert_eq!(got, b.iter().rev().copied().collect::<Vec<_>>());
            assert_eq!(
                (rings.len(0), rings.len(1), rings.len(2)),
                (a.len(), b.len(), 0)
            );
            assert_eq!(rings.iter(2).count(), 0);
            assert_eq!(wire(&rings), postcard::to_allocvec(&(&a, &b, &c)).unwrap());
        }
        let mut restored = Rings::<3, INLINE>::default();
        restored.restore(0, &a).unwrap();
        restored.restore(1, &b).unwrap();
        restored.restore(2, &c).unwrap();
        assert_eq!(wire(&restored), wire(&rings));
        let buffer = vec![1.0f32; 3].into_boxed_slice();
        let late = Ring {
            buffer: buffer.clone(),
            head: 3,
            len: 1,
        };
        assert!(Rings::<3, 4>::default().restore(0, &late).is_err());
        let long = Ring {
            buffer,
            head: 0,
            len: 4,
        };
        assert!(Rings::<3, 4>::default().restore(0, &long).is_err());
    }
}
