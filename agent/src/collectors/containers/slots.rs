//! The bound on one metric's container labels: the first [`MAX_CONTAINERS`] containers get
//! their own, every later one shares `container="other"` until a slot is released.

use super::naming::Container;
use crate::store::hash::HashSet;

/// Most distinct containers one metric labels.
pub const MAX_CONTAINERS: usize = 256;

/// The containers that hold a label of one metric.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    held: HashSet<String>,
}

impl Slots {
    /// Room for `max` containers.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: HashSet::default(),
        }
    }

    /// The label `c` is counted under: `c` itself if it holds a slot or one is free (it keeps
    /// it until [`Slots::release`]), else [`Container::other`].
    pub fn label(&mut self, c: &Container) -> Container {
        if self.held.contains(&c.id) {
            return c.clone();
        }
        if self.held.len() < self.max {
            self.held.insert(c.id.clone());
            return c.clone();
        }
        Container::other()
    }

    /// Frees the slot of `c` (its series are gone: past retention).
    pub fn release(&mut self, c: &Container) {
        self.held.remove(&c.id);
    }

    /// How many slots are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl Default for Slots {
    fn default() -> Self {
        Self::new(MAX_CONTAINERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(i: usize) -> Container {
        Container {
            id: format!("{i:012x}"),
            pod: i.is_multiple_of(2).then(|| format!("ns/p{i}")),
        }
    }

    #[test]
    fn the_first_256_get_a_label_then_other_until_one_is_released() {
        let mut s = Slots::default();
        for i in 0..MAX_CONTAINERS {
            assert_eq!(s.label(&c(i)), c(i));
        }
        assert_eq!(s.len(), MAX_CONTAINERS);
        assert_eq!(s.label(&c(256)), Container::other());
        assert_eq!(s.label(&c(257)), Container::other());
        // Sticky: a container that holds a slot keeps it.
        assert_eq!(s.label(&c(7)), c(7));
        assert_eq!(s.label(&c(0)), c(0));
        s.release(&c(7));
        assert_eq!(s.len(), MAX_CONTAINERS - 1);
        assert_eq!(s.label(&c(257)), c(257));
        assert_eq!(s.label(&c(7)), Container::other());
        assert_eq!(s.label(&c(257)), c(257));
        // Releasing what holds no slot changes nothing.
        s.release(&c(1000));
        assert_eq!(s.len(), MAX_CONTAINERS);
    }

    #[test]
    fn a_small_bound() {
        let mut s = Slots::new(1);
        assert!(s.is_empty());
        assert_eq!(s.label(&c(1)), c(1));
        assert_eq!(s.label(&c(2)), Container::other());
        s.release(&c(1));
        assert_eq!(s.label(&c(2)), c(2));
    }
}
