//! The events of a batch gathered by (tenant, service), for the `batch` format: groups
//! in the order of their first event, events in their original order within a group.
//! The buffers are kept from batch to batch; a batch of one group allocates nothing
//! once they are warm.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Range;

#[derive(Debug, Default)]
pub struct Groups {
    /// Event indices, group after group.
    order: Vec<u32>,
    /// Where each group's events lie in `order`.
    bounds: Vec<Range<usize>>,
    /// Scratch: the group of each event.
    group_of: Vec<u32>,
    /// Scratch: the size of each group, then the next free slot of each in `order`.
    sizes: Vec<u32>,
}

impl Groups {
    /// Groups events by their keys, given in event order.
    pub fn build<K: Eq + Hash + Copy>(&mut self, keys: impl Iterator<Item = K>) {
        self.assign(keys);
        self.lay_out();
    }

    /// Gives each event its group number and counts the events of each group.
    fn assign<K: Eq + Hash + Copy>(&mut self, keys: impl Iterator<Item = K>) {
        self.group_of.clear();
        self.sizes.clear();
        // Events of one tenant and service usually come in runs (one container per
        // connection): the previous event's group is tried first, and the map of
        // every group's key is only built once a second key shows up.
        let mut last: Option<(K, u32)> = None;
        let mut known: HashMap<K, u32> = HashMap::new();
        for key in keys {
            let group = match last {
                Some((k, g)) if k == key => g,
                Some((k, g)) => {
                    if known.is_empty() {
                        known.insert(k, g);
                    }
                    let next = self.sizes.len() as u32;
                    *known.entry(key).or_insert(next)
                }
                None => 0,
            };
            if group as usize == self.sizes.len() {
                self.sizes.push(0);
            }
            self.sizes[group as usize] += 1;
            self.group_of.push(group);
            last = Some((key, group));
        }
    }

    /// Places every event in `order` after the events of the groups before its own.
    fn lay_out(&mut self) {
        self.bounds.clear();
        let mut start = 0;
        for size in &mut self.sizes {
            let end = start + *size as usize;
            self.bounds.push(start..end);
            *size = start as u32;
            start = end;
        }
        self.order.clear();
        self.order.resize(start, 0);
        for (event, &group) in self.group_of.iter().enumerate() {
            let slot = &mut self.sizes[group as usize];
            self.order[*slot as usize] = event as u32;
            *slot += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// The indices of group `g`'s events, in event order.
    pub fn events(&self, g: usize) -> &[u32] {
        self.bounds
            .get(g)
            .and_then(|r| self.order.get(r.clone()))
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grouped(keys: &[&str]) -> Vec<Vec<u32>> {
        let mut g = Groups::default();
        g.build(keys.iter().copied());
        (0..g.len()).map(|i| g.events(i).to_vec()).collect()
    }

    #[test]
    fn first_appearance_order_and_event_order() {
        assert_eq!(grouped(&[]), Vec::<Vec<u32>>::new());
        assert_eq!(grouped(&["a", "a", "a"]), vec![vec![0, 1, 2]]);
        assert_eq!(grouped(&["a", "b", "a"]), vec![vec![0, 2], vec![1]]);
        assert_eq!(
            grouped(&["c", "a", "c", "b", "a", "c"]),
            vec![vec![0, 2, 5], vec![1, 4], vec![3]]
        );
    }

    #[test]
    fn buffers_are_reused_across_batches() {
        let mut g = Groups::default();
        g.build(["x", "y", "x", "z"].into_iter());
        g.build(["y", "y"].into_iter());
        assert_eq!(g.len(), 1);
        assert_eq!(g.events(0), &[0, 1]);
        assert_eq!(g.events(1), &[] as &[u32]);
    }
}
