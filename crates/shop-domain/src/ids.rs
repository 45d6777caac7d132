//! Order ids that are unique across generator replicas and restarts.
//!
//! The only coordination service is Kafka itself: a generator claims a block of ids by
//! producing a record to the single-partition [`ID_BLOCK_TOPIC`](crate::control::ID_BLOCK_TOPIC)
//! and uses the offset the broker assigned as the block number. Offsets of one partition
//! are never handed out twice, so no two claims get the same block, and a generator that
//! restarts simply claims a new one (the rest of its old block is skipped, which is fine:
//! ids must be unique, not dense). Later claims get higher offsets, so each generator's
//! ids increase. Block 0 starts at 1000, the seed's first order id.

/// Ids per block: a million orders before a generator has to claim again, which keeps
/// claims rare even at the maximum rate (one every 10 s at 100 000 orders/s).
pub const BLOCK_SIZE: u64 = 1_000_000;

/// The first order id of block 0, as in the seed.
pub const FIRST_ORDER_ID: u64 = 1000;

/// The ids of one claimed block, handed out in increasing order by [`Iterator::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdBlock {
    block: u64,
    /// The next id, or `None` when the block is used up (or lies beyond `u64`).
    next: Option<u64>,
    /// One past the last id of the block (saturating).
    end: u64,
}

impl IdBlock {
    /// The block with number `block` (the offset of its claim record).
    pub fn new(block: u64) -> IdBlock {
        // Blocks beyond u64 would need offsets around 1.8e13: unreachable, but handled
        // as empty rather than wrapping into ids already handed out.
        let start = block
            .checked_mul(BLOCK_SIZE)
            .and_then(|first| first.checked_add(FIRST_ORDER_ID));
        let end = start.map_or(0, |start| start.saturating_add(BLOCK_SIZE));
        IdBlock {
            block,
            next: start,
            end,
        }
    }

    /// The block number.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// How many ids are left.
    pub fn remaining(&self) -> u64 {
        self.next.map_or(0, |next| self.end.saturating_sub(next))
    }
}

/// `next()` hands out the next unused id, or `None` when the block is exhausted and a new
/// one must be claimed. An iterator, so callers can also `take`, `zip` or `collect` ids.
impl Iterator for IdBlock {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let id = self.next.filter(|&id| id < self.end)?;
        self.next = Some(id + 1);
        Some(id)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = usize::try_from(self.remaining()).ok();
        (remaining.unwrap_or(usize::MAX), remaining)
    }
}

/// Once exhausted, a block stays exhausted.
impl std::iter::FusedIterator for IdBlock {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_id_of_first_block_is_the_seeds_1000() {
        assert_eq!(IdBlock::new(0).next(), Some(1000));
        assert_eq!(IdBlock::new(1).next(), Some(1_001_000));
    }

    #[test]
    fn ids_increase_within_a_block_until_it_is_exhausted() {
        let mut block = IdBlock::new(7);
        assert_eq!(block.remaining(), BLOCK_SIZE);
        let mut last = None;
        let mut count = 0;
        for id in block.by_ref() {
            assert!(last.is_none_or(|last| id == last + 1));
            last = Some(id);
            count += 1;
        }
        assert_eq!(count, BLOCK_SIZE);
        assert_eq!(block.remaining(), 0);
        assert_eq!(block.next(), None);
    }

    #[test]
    fn blocks_are_disjoint_and_later_blocks_have_higher_ids() {
        for n in [0, 1, 2, 41, 1_000_000] {
            let (mut this, mut next) = (IdBlock::new(n), IdBlock::new(n + 1));
            let last_of_this = this.by_ref().last().unwrap();
            assert!(last_of_this < next.next().unwrap(), "block {n}");
        }
    }

    #[test]
    fn blocks_beyond_the_id_space_are_empty() {
        let mut block = IdBlock::new(u64::MAX / BLOCK_SIZE + 1);
        assert_eq!(block.remaining(), 0);
        assert_eq!(block.next(), None);
        let mut last = IdBlock::new((u64::MAX - FIRST_ORDER_ID) / BLOCK_SIZE);
        assert!(last.remaining() <= BLOCK_SIZE);
        assert!(last.next().is_some());
    }
}
