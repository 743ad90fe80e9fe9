//! A metric's prototypes of recent shapes, with a few numbers each (the trainer's use
//! weight and radius, the parameters' radius), in one allocation: a metric of every
//! device keeps them in the trainer and in the scorer's parameters, and two boxed slices
//! cost 16 bytes more than one.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most values in a prototype (the detector's `MAX_DIMS`).
const MAX_DIMS: usize = 16;

/// Prototypes of `dims` values each (`i16`, in the detector's prototype units), each with
/// `EXTRA` `f32` numbers. Written as two sequences, the prototypes one after the other
/// and their numbers, as the two boxed slices this replaces were: the same bytes in the
/// binary forms. In JSON they are one field holding the two (each number set an array),
/// where the slices were two fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prototypes<const EXTRA: usize> {
    /// Empty, or `dims` followed, per prototype, by its values and then its numbers, each
    /// `f32` as its low and high 16 bits: the numbers are kept exactly.
    slots: Box<[i16]>,
}

impl<const EXTRA: usize> Prototypes<EXTRA> {
    /// Values per prototype (0 while there is none).
    #[inline]
    pub fn dims(&self) -> usize {
        self.slots.first().map_or(0, |&dims| dims as usize)
    }

    #[inline]
    fn stride(&self) -> usize {
        self.dims() + 2 * EXTRA
    }

    #[inline]
    pub fn len(&self) -> usize {
        match self.slots.len() {
            0 => 0,
            n => (n - 1) / self.stride(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    #[inline]
    fn slot(&self, index: usize) -> &[i16] {
        let stride = self.stride();
        &self.slots[1 + index * stride..][..stride]
    }

    #[inline]
    fn slot_mut(&mut self, index: usize) -> &mut [i16] {
        let stride = self.stride();
        &mut self.slots[1 + index * stride..][..stride]
    }

    /// The values of prototype `index`.
    #[inline]
    pub fn centroid(&self, index: usize) -> &[i16] {
        &self.slot(index)[..self.dims()]
    }

    #[inline]
    pub fn centroid_mut(&mut self, index: usize) -> &mut [i16] {
        let dims = self.dims();
        &mut self.slot_mut(index)[..dims]
    }

    /// The values of every prototype, in order.
    #[inline]
    pub fn centroids(&self) -> impl Iterator<Item = &[i16]> + '_ {
        let (dims, stride) = (self.dims(), self.stride());
        let body = self.slots.get(1..).unwrap_or_default();
        body.chunks_exact(stride).map(move |slot| &slot[..dims])
    }

    /// Number `which` of prototype `index`.
    #[inline]
    pub fn number(&self, index: usize, which: usize) -> f32 {
        let at = self.dims() + 2 * which;
        let slot = self.slot(index);
        join(slot[at], slot[at + 1])
    }

    #[inline]
    pub fn set_number(&mut self, index: usize, which: usize, value: f32) {
        let at = self.dims() + 2 * which;
        let slot = self.slot_mut(index);
        [slot[at], slot[at + 1]] = split(value);
    }

    /// [`Prototypes::number`], or `None` past the last prototype.
    #[inline]
    pub fn get_number(&self, index: usize, which: usize) -> Option<f32> {
        // `index < len()` without its division: slot `index` ends within the slots.
        let end = 1 + (index + 1) * self.stride();
        (end <= self.slots.len()).then(|| self.number(index, which))
    }

    /// The same prototypes with only the numbers `which` (the parameters' radius of the
    /// trainer's weight and radius).
    pub fn keeping<const K: usize>(&self, which: [usize; K]) -> Prototypes<K> {
        if self.is_empty() {
            return Prototypes::default();
        }
        let dims = self.dims();
        let mut slots = Vec::with_capacity(1 + self.len() * (dims + 2 * K));
        slots.push(dims as i16);
        for index in 0..self.len() {
            slots.extend_from_slice(self.centroid(index));
            for which in which {
                slots.extend(split(self.number(index, which)));
            }
        }
        Prototypes {
            slots: slots.into_boxed_slice(),
        }
    }

    /// Replace number `which` of every prototype by `update` of it.
    pub fn update_numbers(&mut self, which: usize, update: impl Fn(f32) -> f32) {
        let (at, stride) = (self.dims() + 2 * which, self.stride());
        let body = self.slots.get_mut(1..).unwrap_or_default();
        for slot in body.chunks_exact_mut(stride) {
            [slot[at], slot[at + 1]] = split(update(join(slot[at], slot[at + 1])));
        }
    }

    /// Number `which` of every prototype, in order.
    pub fn numbers(&self, which: usize) -> impl Iterator<Item = f32> + '_ {
        (0..self.len()).map(move |index| self.number(index, which))
    }

    /// Add a prototype (the first fixes `dims`, at most 16); the buffer grows exactly, no
    /// spare room per device.
    pub fn push(&mut self, centroid: impl ExactSizeIterator<Item = i16>, numbers: [f32; EXTRA]) {
        let dims = if self.is_empty() {
            centroid.len().min(MAX_DIMS)
        } else {
            self.dims()
        };
        let header = self.is_empty().then_some(dims as i16);
        let mut values = centroid.chain(std::iter::repeat(0));
        let added = (0..dims).map(|_| values.next().unwrap_or(0));
        let numbers = numbers.into_iter().flat_map(split);
        self.slots = header
            .into_iter()
            .chain(self.slots.iter().copied())
            .chain(added)
            .chain(numbers)
            .collect();
    }

    /// From the wire form: the prototypes' values one after the other, and their numbers
    /// (one allocation: decoding parameters is on the scorer's path).
    fn from_parts(values: &[i16], numbers: &[Numbers<EXTRA>]) -> Result<Self, &'static str> {
        if numbers.is_empty() {
            return if values.is_empty() {
                Ok(Self::default())
            } else {
                Err("prototype values without their numbers")
            };
        }
        let dims = values.len() / numbers.len();
        if dims == 0 || dims > MAX_DIMS || values.len() != dims * numbers.len() {
            return Err("prototypes whose values do not fit their count");
        }
        let mut slots = Vec::with_capacity(1 + numbers.len() * (dims + 2 * EXTRA));
        slots.push(dims as i16);
        for (centroid, numbers) in values.chunks_exact(dims).zip(numbers) {
            slots.extend_from_slice(centroid);
            slots.extend(numbers.0.into_iter().flat_map(split));
        }
        Ok(Self {
            slots: slots.into_boxed_slice(),
        })
    }
}

#[inline]
fn split(value: f32) -> [i16; 2] {
    let bits = value.to_bits();
    [bits as u16 as i16, (bits >> 16) as u16 as i16]
}

#[inline]
fn join(low: i16, high: i16) -> f32 {
    f32::from_bits(u32::from(low as u16) | (u32::from(high as u16) << 16))
}

/// One prototype's numbers on the wire: a tuple (as `[f32; EXTRA]` is written; a single
/// number is the `f32` alone in the binary form).
struct Numbers<const EXTRA: usize>([f32; EXTRA]);

impl<const EXTRA: usize> Serialize for Numbers<EXTRA> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut out = s.serialize_tuple(EXTRA)?;
        for number in &self.0 {
            out.serialize_element(number)?;
        }
        out.end()
    }
}

impl<'de, const EXTRA: usize> Deserialize<'de> for Numbers<EXTRA> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<const EXTRA: usize>;
        impl<'de, const EXTRA: usize> serde::de::Visitor<'de> for Visit<EXTRA> {
            type Value = Numbers<EXTRA>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "{EXTRA} numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut numbers = [0.0; EXTRA];
                for (which, number) in numbers.iter_mut().enumerate() {
                    *number = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(which, &self))?;
                }
                Ok(Numbers(numbers))
            }
        }
        d.deserialize_tuple(EXTRA, Visit)
    }
}

impl<const EXTRA: usize> Serialize for Prototypes<EXTRA> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Values<'a, const EXTRA: usize>(&'a Prototypes<EXTRA>);
        impl<const EXTRA: usize> Serialize for Values<'_, EXTRA> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let prototypes = self.0;
                let mut out = s.serialize_seq(Some(prototypes.len() * prototypes.dims()))?;
                for value in prototypes.centroids().flatten() {
                    out.serialize_element(value)?;
                }
                out.end()
            }
        }
        struct AllNumbers<'a, const EXTRA: usize>(&'a Prototypes<EXTRA>);
        impl<const EXTRA: usize> Serialize for AllNumbers<'_, EXTRA> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let prototypes = self.0;
                s.collect_seq((0..prototypes.len()).map(|index| {
                    Numbers::<EXTRA>(std::array::from_fn(|which| prototypes.number(index, which)))
                }))
            }
        }
        let mut out = s.serialize_tuple(2)?;
        out.serialize_element(&Values(self))?;
        out.serialize_element(&AllNumbers(self))?;
        out.end()
    }
}

impl<'de, const EXTRA: usize> Deserialize<'de> for Prototypes<EXTRA> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (values, numbers): (Vec<i16>, Vec<Numbers<EXTRA>>) = Deserialize::deserialize(d)?;
        Self::from_parts(&values, &numbers).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kept_exactly() {
        let mut prototypes = Prototypes::<2>::default();
        prototypes.push([1i16, -2, 3].into_iter(), [0.1, f32::MIN_POSITIVE]);
        prototypes.push([4i16, 5, -32767].into_iter(), [-1e30, 7.5]);
        assert_eq!(prototypes.len(), 2);
        assert_eq!(prototypes.dims(), 3);
        assert_eq!(prototypes.centroid(1), &[4, 5, -32767]);
        assert_eq!(prototypes.number(0, 0), 0.1);
        assert_eq!(prototypes.number(0, 1), f32::MIN_POSITIVE);
        assert_eq!(prototypes.number(1, 0), -1e30);
        prototypes.set_number(1, 1, -0.25);
        assert_eq!(
            prototypes.numbers(1).collect::<Vec<_>>(),
            [f32::MIN_POSITIVE, -0.25]
        );
        prototypes.centroid_mut(0)[2] = 9;
        let centroids: Vec<&[i16]> = prototypes.centroids().collect();
        assert_eq!(centroids, [&[1, -2, 9][..], &[4, 5, -32767]]);
    }

    /// The bytes of the two boxed slices the prototypes replace.
    #[test]
    fn written_as_the_slices_were() {
        let mut trainer = Prototypes::<2>::default();
        trainer.push([1i16, 2].into_iter(), [1.0, 0.5]);
        trainer.push([3i16, 4].into_iter(), [2.0, 0.25]);
        let before: (Box<[i16]>, Box<[[f32; 2]]>) = (
            vec![1, 2, 3, 4].into(),
            vec![[1.0, 0.5], [2.0, 0.25]].into(),
        );
        let bytes = postcard::to_allocvec(&trainer).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(
            postcard::from_bytes::<Prototypes<2>>(&bytes).unwrap(),
            trainer
        );

        let mut params = Prototypes::<1>::default();
        params.push([1i16, 2].into_iter(), [0.5]);
        let before: (Box<[i16]>, Box<[f32]>) = (vec![1, 2].into(), vec![0.5].into());
        let bytes = postcard::to_allocvec(&params).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(
            postcard::from_bytes::<Prototypes<1>>(&bytes).unwrap(),
            params
        );
        let empty = postcard::to_allocvec(&Prototypes::<1>::default()).unwrap();
        assert_eq!(empty, [0, 0]);
    }

    #[test]
    fn prototypes_that_do_not_fit_are_refused() {
        for (values, numbers) in [
            (vec![1i16, 2, 3], vec![0.5f32, 0.5]),
            (vec![1i16], vec![]),
            (vec![], vec![0.5]),
            (vec![0; 17], vec![0.5]),
        ] {
            let bytes = postcard::to_allocvec(&(values, numbers)).unwrap();
            assert!(postcard::from_bytes::<Prototypes<1>>(&bytes).is_err());
        }
    }
}
