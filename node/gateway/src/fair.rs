//! [`FairSlots`]: a node's call slots, shared fairly between tenants.
//!
//! Each call holds one slot while it runs. While slots are free a call takes
//! one at once, whoever it belongs to, so a lone tenant may use them all.
//! When every slot is busy, calls wait in one queue per tenant, and a freed
//! slot goes to the waiting tenant with the fewest calls running; among
//! equals, to the one served least recently (round-robin), then to the
//! longest-waiting call. A tenant flooding the node waits behind every other
//! tenant's next call instead of ahead of it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// A node's call slots.
#[derive(Debug)]
pub struct FairSlots {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Slots held, by tenant (tenants holding none are removed).
    running: HashMap<Arc<str>, usize>,
    /// Calls waiting, by tenant, each with its arrival number.
    waiting: HashMap<Arc<str>, VecDeque<(u64, oneshot::Sender<()>)>>,
    arrivals: u64,
    /// When each tenant with calls running or waiting was last given a
    /// slot, in grants.
    served: HashMap<Arc<str>, u64>,
    grants: u64,
}

impl State {
    fn grant(&mut self, tenant: Arc<str>) {
        self.grants += 1;
        self.served.insert(tenant.clone(), self.grants);
        *self.running.entry(tenant).or_default() += 1;
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct FairPermit {
    slots: Arc<FairSlots>,
    tenant: Arc<str>,
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.slots.release(&self.tenant);
    }
}

/// A call waiting for a slot; if it stops waiting (its timeout) after a
/// slot was handed to it, the slot is passed on.
struct Waiter {
    slots: Arc<FairSlots>,
    tenant: Arc<str>,
    granted: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.granted.close();
        if self.granted.try_recv().is_ok() {
            self.slots.release(&self.tenant);
        }
    }
}

impl FairSlots {
    /// `capacity` slots (at least one).
    pub fn new(capacity: usize) -> Arc<FairSlots> {
        let capacity = capacity.max(1);
        Arc::new(FairSlots { capacity, state: Mutex::new(State { free: capacity, ..State::default() }) })
    }

    /// How many calls may run at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots held now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.lock().free
    }

    /// Calls of `tenant` holding a slot now.
    pub fn running(&self, tenant: &str) -> usize {
        self.lock().running.get(tenant).copied().unwrap_or(0)
    }

    /// Calls waiting for a slot now, of every tenant.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().map(|q| q.iter().filter(|(_, tx)| !tx.is_closed()).count()).sum()
    }

    /// A slot for one of `tenant`'s calls: at once if one is free, else when
    /// the fair order reaches it. Dropping the future gives up the place.
    pub async fn acquire(self: &Arc<Self>, tenant: impl Into<Arc<str>>) -> FairPermit {
        let tenant: Arc<str> = tenant.into();
        let granted = {
            let mut state = self.lock();
            if state.free > 0 {
                state.free -= 1;
                state.grant(tenant.clone());
                return FairPermit { slots: self.clone(), tenant };
            }
            let (grant, granted) = oneshot::channel();
            let arrival = state.arrivals;
            state.arrivals += 1;
            state.waiting.entry(tenant.clone()).or_default().push_back((arrival, grant));
            granted
        };
        let mut waiter = Waiter { slots: self.clone(), tenant, granted, done: false };
        // The sender lives in the queue until it is used: it is never
        // dropped unsent while the waiter waits.
        let _ = (&mut waiter.granted).await;
        waiter.done = true;
        FairPermit { slots: self.clone(), tenant: waiter.tenant.clone() }
    }

    /// Gives `tenant`'s slot to the next call in the fair order, or frees it.
    fn release(&self, tenant: &Arc<str>) {
        let mut state = self.lock();
        if let Some(n) = state.running.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                state.running.remove(tenant);
                if !state.waiting.contains_key(tenant) {
                    state.served.remove(tenant);
                }
            }
        }
        loop {
            let next = state
                .waiting
                .iter()
                .filter_map(|(t, q)| {
                    let (arrival, _) = q.front()?;
                    let running = state.running.get(t).copied().unwrap_or(0);
                    Some((running, state.served.get(t).copied().unwrap_or(0), *arrival, t))
                })
                .min()
                .map(|(_, _, _, t)| t.clone());
            let Some(next) = next else {
                state.free += 1;
                return;
            };
            let queue = state.waiting.get_mut(&next).expect("chosen from the map");
            let (_, grant) = queue.pop_front().expect("chosen for its head");
            if queue.is_empty() {
                state.waiting.remove(&next);
            }
            // A waiter that gave up has closed its end: try the next one.
            if grant.send(()).is_ok() {
                state.grant(next);
                return;
            }
            if !state.running.contains_key(&next) && !state.waiting.contains_key(&next) {
                state.served.remove(&next);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panic elsewhere
        // while it was held leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Polls `future` until it is pending (or done).
    async fn started<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(20), future).await.ok()
    }

    #[tokio::test]
    async fn a_lone_tenant_uses_every_slot() {
        let slots = FairSlots::new(3);
        let held = vec![slots.acquire("a").await, slots.acquire("a").await, slots.acquire("a").await];
        assert_eq!(slots.running("a"), 3);
        let mut fourth = Box::pin(slots.acquire("a"));
        assert!(started(&mut fourth).await.is_none(), "no fourth slot");
        drop(held);
        let _fourth = fourth.await;
        assert_eq!(slots.running("a"), 1);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_tenant_with_fewest_running() {
        let slots = FairSlots::new(2);
        let a1 = slots.acquire("a").await;
        let _a2 = slots.acquire("a").await;
        // A queues three calls before B's one arrives.
        let mut queued_a: Vec<_> = (0..3).map(|_| Box::pin(slots.acquire("a"))).collect();
        for f in &mut queued_a {
            assert!(started(f).await.is_none());
        }
        let mut b = Box::pin(slots.acquire("b"));
        assert!(started(&mut b).await.is_none());
        assert_eq!(slots.waiting(), 4);

        drop(a1);
        let b_permit = started(&mut b).await.expect("B's call takes the freed slot");
        assert_eq!((slots.running("a"), slots.running("b")), (1, 1));
        for f in &mut queued_a {
            assert!(started(f).await.is_none(), "A's queued calls still wait");
        }

        // B's slot back: A's first queued call, in arrival order.
        drop(b_permit);
        let mut rest = queued_a.split_off(1);
        let _first = started(&mut queued_a[0]).await.expect("A's first waiter");
        for f in &mut rest {
            assert!(started(f).await.is_none());
        }
    }

    #[tokio::test]
    async fn with_one_slot_tenants_take_turns() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let mut queued_a: Vec<_> = (0..2).map(|_| Box::pin(slots.acquire("a"))).collect();
        for f in &mut queued_a {
            assert!(started(f).await.is_none());
        }
        let mut b = Box::pin(slots.acquire("b"));
        assert!(started(&mut b).await.is_none());
        // Neither has a call running once A's ends: B, not served lately, goes first.
        drop(held);
        let b_permit = started(&mut b).await.expect("B's turn");
        assert!(started(&mut queued_a[0]).await.is_none());
        drop(b_permit);
        let _a = started(&mut queued_a[0]).await.expect("then A's first waiter");
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_slot() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), slots.acquire("b")).await;
        assert!(gave_up.is_err());
        drop(held);
        // The slot is free again, not handed to the waiter that left.
        let _again = started(&mut Box::pin(slots.acquire("c"))).await.expect("the slot is free");
        assert_eq!(slots.running("b"), 0);
    }

    #[tokio::test]
    async fn a_slot_granted_as_its_waiter_leaves_is_passed_on() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await;
        let mut leaving = Box::pin(slots.acquire("b"));
        assert!(started(&mut leaving).await.is_none());
        let mut next = Box::pin(slots.acquire("c"));
        assert!(started(&mut next).await.is_none());
        // The slot is handed to B's call, which is dropped before it runs.
        drop(held);
        drop(leaving);
        let _c = started(&mut next).await.expect("C's call gets the slot B's left");
        assert_eq!((slots.running("b"), slots.running("c")), (0, 1));
    }
}
