//! A client history of a grow-only set (adds of unique elements, reads of
//! the whole set) and an exact linearizability check for it. Elements are
//! numbers (the harness maps its names to them), reads sorted lists.
//!
//! Why it is exact: in any linearization the set only grows, so the reads'
//! results must form a chain under inclusion. Merge reads with equal
//! results into classes and order the classes by size; an add then belongs
//! between the last class that lacks it and the first that holds it (adds
//! no read saw go after every read). That fixes a sequence of groups (the
//! adds first seen by class 1, class 1's reads, the adds first seen by
//! class 2, ...), and the history is linearizable exactly when each
//! operation can take a point inside its own interval with every group
//! after the one before. The earliest such schedule is greedy: each group
//! starts after the previous group's latest invocation.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How an add ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: it must be visible to every read that starts after.
    Ok,
    /// Failed or timed out: it may or may not have taken effect.
    Unknown,
}

/// One add, with its interval (time since the run started).
#[derive(Debug, Clone)]
pub struct Add {
    pub name: u32,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
}

/// One successful read of the whole set.
#[derive(Debug, Clone)]
pub struct Read {
    pub invoked: Duration,
    pub completed: Duration,
    /// Sorted, no repeats.
    pub names: Vec<u32>,
}

/// Whether sorted `a` is contained in sorted `b`.
fn is_subset(a: &[u32], b: &[u32]) -> bool {
    let mut rest = b.iter();
    a.iter().all(|x| rest.any(|y| y == x))
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A read saw an element no add wrote.
    Phantom(u32),
    /// Two reads saw sets neither of which holds the other.
    NotAChain { a: usize, b: usize },
    /// No schedule exists: this operation would have to take effect after
    /// it completed (`what` says which and why).
    Order(String),
}

/// Checks `adds` and `reads`; `Ok` with the number of groups when the
/// history is linearizable.
pub fn check(adds: &[Add], reads: &[Read]) -> Result<usize, Violation> {
    let by_name: BTreeMap<u32, &Add> = adds.iter().map(|a| (a.name, a)).collect();
    for read in reads {
        if let Some(name) = read.names.iter().find(|n| !by_name.contains_key(n)) {
            return Err(Violation::Phantom(*name));
        }
    }
    // Classes of reads with equal results, by size: a chain, or no history.
    let mut order: Vec<usize> = (0..reads.len()).collect();
    order.sort_by_key(|&i| reads[i].names.len());
    let mut classes: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match classes.last_mut() {
            Some(class) if reads[class[0]].names == reads[i].names => class.push(i),
            Some(class) => {
                let prev = class[0];
                if !is_subset(&reads[prev].names, &reads[i].names) {
                    return Err(Violation::NotAChain { a: prev, b: i });
                }
                classes.push(vec![i]);
            }
            None => classes.push(vec![i]),
        }
    }

    // The groups, in the only order a linearization can have.
    let mut groups: Vec<Vec<(Duration, Duration, String)>> = Vec::new();
    let mut seen: HashSet<u32> = HashSet::new();
    for class in &classes {
        let names = &reads[class[0]].names;
        let first_seen: Vec<_> = names
            .iter()
            .filter(|n| !seen.contains(n))
            .map(|n| {
                let add = by_name[n];
                // An add of unknown outcome that a read saw did take effect,
                // at some point after it was invoked.
                let completed = if add.outcome == Outcome::Ok { add.completed } else { Duration::MAX };
                (add.invoked, completed, format!("add {n}"))
            })
            .collect();
        seen.extend(names.iter().copied());
        groups.push(first_seen);
        let group = class
            .iter()
            .map(|&i| (reads[i].invoked, reads[i].completed, format!("read {i} ({} names)", names.len())))
            .collect();
        groups.push(group);
    }
    // Acknowledged adds no read saw come after every read; unknown ones
    // that nobody saw may never have happened.
    let unseen = adds
        .iter()
        .filter(|a| a.outcome == Outcome::Ok && !seen.contains(&a.name))
        .map(|a| (a.invoked, a.completed, format!("add {} (acknowledged, seen by no read)", a.name)))
        .collect();
    groups.push(unseen);

    let mut after: Option<(Duration, String)> = None;
    for group in groups.iter().filter(|g| !g.is_empty()) {
        if let Some((t, because)) = &after
            && let Some((_, completed, what)) = group.iter().find(|(_, completed, _)| completed <= t)
        {
            return Err(Violation::Order(format!(
                "{what} completed at {completed:?}, before {because} was invoked at {t:?}, yet must follow it"
            )));
        }
        let latest = group.iter().max_by_key(|(invoked, _, _)| *invoked).map(|(i, _, w)| (*i, w.clone()));
        if let Some((invoked, what)) = latest
            && after.as_ref().is_none_or(|(t, _)| invoked > *t)
        {
            after = Some((invoked, what));
        }
    }
    Ok(groups.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Elements are letters here.
    fn id(name: &str) -> u32 {
        u32::from(name.as_bytes()[0])
    }

    fn add(name: &str, invoked: u64, completed: u64, outcome: Outcome) -> Add {
        Add { name: id(name), invoked: ms(invoked), completed: ms(completed), outcome }
    }

    fn read(invoked: u64, completed: u64, names: &[&str]) -> Read {
        let mut names: Vec<u32> = names.iter().map(|n| id(n)).collect();
        names.sort_unstable();
        Read { invoked: ms(invoked), completed: ms(completed), names }
    }

    #[test]
    fn a_plain_history_passes() {
        let adds = [add("a", 0, 10, Outcome::Ok), add("b", 5, 30, Outcome::Ok), add("c", 40, 50, Outcome::Unknown)];
        let reads = [read(12, 20, &["a"]), read(15, 35, &["a", "b"]), read(60, 70, &["a", "b"])];
        assert!(check(&adds, &reads).is_ok());
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        let adds = [add("a", 0, 10, Outcome::Ok)];
        let reads = [read(20, 30, &[])];
        assert!(matches!(check(&adds, &reads), Err(Violation::Order(_))));
    }

    #[test]
    fn a_stale_read_after_a_fresher_one_fails() {
        let adds = [add("a", 0, 100, Outcome::Unknown)];
        let reads = [read(10, 20, &["a"]), read(30, 40, &[])];
        assert!(matches!(check(&adds, &reads), Err(Violation::Order(_))));
    }

    #[test]
    fn reads_that_are_not_a_chain_fail() {
        let adds = [add("a", 0, 100, Outcome::Ok), add("b", 0, 100, Outcome::Ok)];
        let reads = [read(10, 20, &["a"]), read(10, 20, &["b"])];
        assert!(matches!(check(&adds, &reads), Err(Violation::NotAChain { .. })));
    }

    #[test]
    fn reading_a_later_write_without_an_earlier_one_fails() {
        // b was invoked after a was acknowledged, yet a read sees b only.
        let adds = [add("a", 0, 10, Outcome::Ok), add("b", 20, 30, Outcome::Ok)];
        let reads = [read(25, 40, &["b"])];
        assert!(matches!(check(&adds, &reads), Err(Violation::Order(_))));
    }

    #[test]
    fn an_unknown_add_may_appear_late_or_never() {
        let adds = [add("a", 0, 10, Outcome::Unknown), add("b", 0, 10, Outcome::Unknown)];
        let reads = [read(20, 30, &[]), read(40, 50, &["a"])];
        assert!(check(&adds, &reads).is_ok());
    }

    #[test]
    fn a_name_nobody_wrote_fails() {
        let reads = [read(0, 1, &["ghost"])];
        assert_eq!(check(&[], &reads), Err(Violation::Phantom(id("ghost"))));
    }
}
