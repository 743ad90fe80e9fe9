//! Fixed-capacity rings of the last few values: exactly the memory they need (a
//! `VecDeque` rounds its buffer up to a power of two), which matters at a million devices.
//! [`Rings`] keeps several in one buffer; [`Ring`] is one ring's wire form in the
//! trainer's state (and the behaviour `Rings` is tested against).

use std::marker::PhantomData;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

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

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        let (head, len) = (self.head as usize, self.len as usize);
        let first = &self.buffer[head..(head + len).min(self.buffer.len())];
        let wrapped = &self.buffer[..len - first.len()];
        first.iter().chain(wrapped)
    }
}

/// A value [`Rings`] holds, as 32-bit words.
pub(crate) trait Word: Copy + Default + Serialize + 'static {
    const WORDS: usize;
    fn put(self, out: &mut [u32]);
    fn get(words: &[u32]) -> Self;
}

impl Word for f32 {
    const WORDS: usize = 1;
    fn put(self, out: &mut [u32]) {
        out[0] = self.to_bits();
    }
    fn get(words: &[u32]) -> Self {
        f32::from_bits(words[0])
    }
}

impl Word for f64 {
    const WORDS: usize = 2;
    fn put(self, out: &mut [u32]) {
        let bits = self.to_bits();
        out[0] = bits as u32;
        out[1] = (bits >> 32) as u32;
    }
    fn get(words: &[u32]) -> Self {
        f64::from_bits(u64::from(words[0]) | (u64::from(words[1]) << 32))
    }
}

/// `N` rings of the last few values in one allocation: each ring behaves as a [`Ring`]
/// (and is written as one: [`Rings::wire`]), but the rings share one buffer and keep
/// their capacity, start and length in a byte each. Three [`Ring`]s cost 72 bytes
/// beside their buffers and three allocations; `Rings<3>` 28 and one. A metric's context
/// is kept by the trainer and the scorer alike, for every metric of every device.
#[derive(Clone, Debug)]
pub(crate) struct Rings<const N: usize> {
    /// Ring after ring, each `caps[r] × widths[r]` words.
    words: Box<[u32]>,
    /// Words per value (0 until the ring's first push).
    widths: [u8; N],
    /// Capacity (0 until the ring's first push; at most 255).
    caps: [u8; N],
    /// Index of the oldest value.
    heads: [u8; N],
    lens: [u8; N],
}

impl<const N: usize> Default for Rings<N> {
    fn default() -> Self {
        Self {
            words: Box::default(),
            widths: [0; N],
            caps: [0; N],
            heads: [0; N],
            lens: [0; N],
        }
    }
}

impl<const N: usize> Rings<N> {
    /// Where ring `r` begins in `words`.
    fn offset(&self, r: usize) -> usize {
        (0..r)
            .map(|s| usize::from(self.caps[s]) * usize::from(self.widths[s]))
            .sum()
    }

    /// Give ring `r` room for `cap` values of `width` words, empty, keeping the others.
    fn relayout(&mut self, r: usize, cap: u8, width: u8) {
        let mut caps = self.caps;
        let mut widths = self.widths;
        caps[r] = cap;
        widths[r] = width;
        let size = |s: usize| usize::from(caps[s]) * usize::from(widths[s]);
        let mut words = vec![0u32; (0..N).map(size).sum()].into_boxed_slice();
        let (mut from, mut to) = (0, 0);
        for s in 0..N {
            let old = usize::from(self.caps[s]) * usize::from(self.widths[s]);
            if s != r {
                words[to..to + old].copy_from_slice(&self.words[from..from + old]);
            }
            from += old;
            to += size(s);
        }
        self.words = words;
        self.caps = caps;
        self.widths = widths;
        self.heads[r] = 0;
        self.lens[r] = 0;
    }

    /// Append `value` to ring `r`, dropping its oldest once `capacity` values are held,
    /// as [`Ring::push`] does (a capacity above 255, which no valid configuration asks
    /// for, holds 255).
    pub fn push<T: Word>(&mut self, r: usize, value: T, capacity: usize) {
        if capacity == 0 {
            return;
        }
        let cap = u8::try_from(capacity).unwrap_or(u8::MAX);
        let width = T::WORDS as u8;
        if self.caps[r] != cap || self.widths[r] != width {
            // First use (or a changed configuration): start over at the right size.
            self.relayout(r, cap, width);
        }
        let (head, len) = (self.heads[r], self.lens[r]);
        let slot = if len < cap {
            self.lens[r] = len + 1;
            (u16::from(head) + u16::from(len)) % u16::from(cap)
        } else {
            self.heads[r] = ((u16::from(head) + 1) % u16::from(cap)) as u8;
            u16::from(head)
        };
        let at = self.offset(r) + usize::from(slot) * T::WORDS;
        value.put(&mut self.words[at..at + T::WORDS]);
    }

    pub fn len(&self, r: usize) -> usize {
        usize::from(self.lens[r])
    }

    /// Ring `r`'s values, oldest first.
    pub fn iter<T: Word>(&self, r: usize) -> impl Iterator<Item = T> + '_ {
        let (buffer, head, len) = self.ring(r);
        let first = head..(head + len).min(buffer.len() / T::WORDS);
        let wrapped = len - first.len();
        let first = &buffer[first.start * T::WORDS..first.end * T::WORDS];
        let wrapped = &buffer[..wrapped * T::WORDS];
        (first.chunks_exact(T::WORDS))
            .chain(wrapped.chunks_exact(T::WORDS))
            .map(T::get)
    }

    /// Ring `r`'s buffer, start and length.
    fn ring(&self, r: usize) -> (&[u32], usize, usize) {
        let at = self.offset(r);
        let size = usize::from(self.caps[r]) * usize::from(self.widths[r]);
        let (head, len) = (usize::from(self.heads[r]), usize::from(self.lens[r]));
        (&self.words[at..at + size], head, len)
    }

    /// Ring `r` as the [`Ring`] of values of type `T` it stands for, for serde.
    pub fn wire<T: Word>(&self, r: usize) -> RingWire<'_, T, N> {
        RingWire {
            rings: self,
            ring: r,
            values: PhantomData,
        }
    }

    /// Make ring `r` the `ring` read from the wire; refuses a ring whose start or length
    /// does not fit its buffer, or whose buffer is longer than 255 values.
    pub fn restore<T: Word>(&mut self, r: usize, ring: &Ring<T>) -> Result<(), &'static str> {
        let cap = u8::try_from(ring.buffer.len()).map_err(|_| "a ring longer than 255")?;
        let fits = ring.len <= u32::from(cap)
            && (ring.head < u32::from(cap) || (cap == 0 && ring.head == 0));
        if !fits {
            return Err("a ring whose start or length does not fit its buffer");
        }
        if cap == 0 {
            return Ok(());
        }
        self.relayout(r, cap, T::WORDS as u8);
        let at = self.offset(r);
        for (i, &value) in ring.buffer.iter().enumerate() {
            value.put(&mut self.words[at + i * T::WORDS..][..T::WORDS]);
        }
        self.heads[r] = ring.head as u8;
        self.lens[r] = ring.len as u8;
        Ok(())
    }
}

/// One of [`Rings`]' rings, serialized as the [`Ring`] it stands for (buffer, start,
/// length): the trainer's state is the same bytes either way.
pub(crate) struct RingWire<'a, T, const N: usize> {
    rings: &'a Rings<N>,
    ring: usize,
    values: PhantomData<T>,
}

impl<T: Word, const N: usize> Serialize for RingWire<'_, T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (buffer, head, len) = self.rings.ring(self.ring);
        let mut out = s.serialize_struct("Ring", 3)?;
        let values = Values::<T> {
            words: buffer,
            values: PhantomData,
        };
        out.serialize_field("buffer", &values)?;
        out.serialize_field("head", &(head as u32))?;
        out.serialize_field("len", &(len as u32))?;
        out.end()
    }
}

/// A buffer's words as the sequence of values they hold.
struct Values<'a, T> {
    words: &'a [u32],
    values: PhantomData<T>,
}

impl<T: Word> Serialize for Values<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.words.chunks_exact(T::WORDS).map(T::get))
    }
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
    }

    /// A `Rings` pushed as three `Ring`s gives their values and their wire form, through
    /// wraps, a capacity changed under it, and a ring never pushed; a restored one is
    /// the same.
    #[test]
    fn rings_behave_and_serialize_as_rings() {
        let mut rings = Rings::<3>::default();
        let (mut a, mut b) = (Ring::<f32>::default(), Ring::<f64>::default());
        let c = Ring::<f32>::default();
        let wire = |rings: &Rings<3>| {
            let parts = (
                rings.wire::<f32>(0),
                rings.wire::<f64>(1),
                rings.wire::<f32>(2),
            );
            postcard::to_allocvec(&parts).unwrap()
        };
        for v in 0..23 {
            let cap_a = if v < 11 { 5 } else { 3 };
            a.push(v as f32 * 0.5, cap_a);
            rings.push(0, v as f32 * 0.5, cap_a);
            if v % 3 != 0 {
                b.push(f64::from(v) / 7.0, 6);
                rings.push(1, f64::from(v) / 7.0, 6);
            }
            let got: Vec<f32> = rings.iter(0).collect();
            assert_eq!(got, a.iter().copied().collect::<Vec<_>>());
            let got: Vec<f64> = rings.iter(1).collect();
            assert_eq!(got, b.iter().copied().collect::<Vec<_>>());
            assert_eq!(
                (rings.len(0), rings.len(1), rings.len(2)),
                (a.len(), b.len(), 0)
            );
            assert_eq!(rings.iter::<f32>(2).count(), 0);
            assert_eq!(wire(&rings), postcard::to_allocvec(&(&a, &b, &c)).unwrap());
        }
        let mut restored = Rings::<3>::default();
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
        assert!(Rings::<3>::default().restore(0, &late).is_err());
        let long = Ring {
            buffer,
            head: 0,
            len: 4,
        };
        assert!(Rings::<3>::default().restore(0, &long).is_err());
    }
}
