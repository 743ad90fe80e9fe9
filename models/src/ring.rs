//! A fixed-capacity ring of the last few values: exactly the memory it needs (a
//! `VecDeque` rounds its buffer up to a power of two), which matters at a million devices.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Ring<T> {
    buffer: Box<[T]>,
    /// Index of the oldest value.
    head: u32,
    len: u32,
}

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
}
