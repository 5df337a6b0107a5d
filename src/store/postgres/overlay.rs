//! What a transaction knows of its rows without asking the database again: rows it read
//! (present or absent), key ranges it read whole, and (in a write transaction) rows it wrote and
//! has not sent yet.

use std::collections::{HashMap, VecDeque};

/// A (key as redb encodes it, value) row.
pub(crate) type Row = (Vec<u8>, Vec<u8>);
/// A row a write transaction wrote and has not sent: (sort key, the row written, or `None` for a
/// deletion).
pub(crate) type UnsentRow = (Vec<u8>, Option<Row>);
/// A key range by sort keys: from (inclusive), before (exclusive; `None`: to the end).
pub(crate) type SortRange = (Vec<u8>, Option<Vec<u8>>);

/// What a transaction knows of one row.
pub(super) enum Known {
    /// Read: the table has no such row.
    Absent,
    /// Read: the row.
    Present(Row),
    /// Written by this transaction and not sent yet.
    Put(Row),
    /// Deleted by this transaction and not sent yet.
    Deleted,
}

impl Known {
    pub(super) fn row(&self) -> Option<&Row> {
        match self {
            Self::Present(row) | Self::Put(row) => Some(row),
            Self::Absent | Self::Deleted => None,
        }
    }

    fn is_unsent(&self) -> bool {
        matches!(self, Self::Put(..) | Self::Deleted)
    }
}

/// The unsent writes of one table: rows to upsert (sort keys, keys, values) and sort keys to
/// delete.
#[derive(Default)]
pub(super) struct Unsent {
    pub(super) sort_keys: Vec<Vec<u8>>,
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) values: Vec<Vec<u8>>,
    pub(super) deletes: Vec<Vec<u8>>,
}

/// A transaction's rows of one table, by sort key.
#[derive(Default)]
pub(super) struct TableOverlay {
    rows: HashMap<Vec<u8>, Known>,
    unsent: usize,
    /// Ranges read whole: every row of the table in them is in `rows`.
    complete: Vec<SortRange>,
}

fn within(key: &[u8], from: &[u8], before: Option<&[u8]>) -> bool {
    key >= from && before.is_none_or(|before| key < before)
}

impl TableOverlay {
    pub(super) fn get(&self, sort_key: &[u8]) -> Option<&Known> {
        self.rows.get(sort_key)
    }

    pub(super) fn has_unsent(&self) -> bool {
        self.unsent > 0
    }

    pub(super) fn record(&mut self, sort_key: Vec<u8>, known: Known) {
        let now_unsent = known.is_unsent();
        let was_unsent = self
            .rows
            .insert(sort_key, known)
            .is_some_and(|old| old.is_unsent());
        match (was_unsent, now_unsent) {
            (false, true) => self.unsent += 1,
            (true, false) => self.unsent -= 1,
            _ => {}
        }
    }

    /// Records a row read from the database, unless the transaction knows the row already (it
    /// may have written it since).
    pub(super) fn record_read(&mut self, sort_key: Vec<u8>, known: Known) {
        self.rows.entry(sort_key).or_insert(known);
    }

    /// Records that every row of the range was read (and recorded).
    pub(super) fn record_complete(&mut self, range: SortRange) {
        self.complete.push(range);
    }

    /// The rows from `from` to `before`, in key order, if a range read whole covers them.
    pub(super) fn rows_in(&self, from: &[u8], before: Option<&[u8]>) -> Option<VecDeque<Row>> {
        let covered = self.complete.iter().any(|(low, high)| {
            low.as_slice() <= from
                && match (high, before) {
                    (None, _) => true,
                    (Some(high), Some(before)) => before <= high.as_slice(),
                    (Some(_), None) => false,
                }
        });
        if !covered {
            return None;
        }
        let mut rows: Vec<(&Vec<u8>, &Row)> = self
            .rows
            .iter()
            .filter(|(key, _)| within(key, from, before))
            .filter_map(|(key, known)| known.row().map(|row| (key, row)))
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(rows.into_iter().map(|(_, row)| row.clone()).collect())
    }

    /// The unsent writes from `from` to `before`, in key order.
    pub(super) fn unsent_in(&self, from: &[u8], before: Option<&[u8]>) -> VecDeque<UnsentRow> {
        if self.unsent == 0 {
            return VecDeque::new();
        }
        let mut unsent: Vec<UnsentRow> = self
            .rows
            .iter()
            .filter(|(key, _)| within(key, from, before))
            .filter_map(|(key, known)| match known {
                Known::Put(row) => Some((key.clone(), Some(row.clone()))),
                Known::Deleted => Some((key.clone(), None)),
                Known::Absent | Known::Present(_) => None,
            })
            .collect();
        unsent.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        unsent.into()
    }

    /// The unsent writes in key order, now marked as sent. (In key order, so that transactions
    /// writing the same rows lock them in the same order and wait for each other rather than
    /// deadlock.)
    pub(super) fn take_unsent(&mut self) -> Unsent {
        let mut unsent = Unsent::default();
        if self.unsent == 0 {
            return unsent;
        }
        let mut rows: Vec<(&Vec<u8>, &mut Known)> = self
            .rows
            .iter_mut()
            .filter(|(_, known)| known.is_unsent())
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (sort_key, known) in rows {
            match std::mem::replace(known, Known::Absent) {
                Known::Put(row) => {
                    unsent.sort_keys.push(sort_key.clone());
                    unsent.keys.push(row.0.clone());
                    unsent.values.push(row.1.clone());
                    *known = Known::Present(row);
                }
                Known::Deleted => unsent.deletes.push(sort_key.clone()),
                sent => *known = sent,
            }
        }
        self.unsent = 0;
        unsent
    }
}
