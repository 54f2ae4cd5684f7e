//! The clients the fault tests run against a control plane: writers that
//! create tenants `c0`, `c1`, ... and readers that list them, every
//! operation recorded with its interval for [`crate::history::check`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmgrid_api::{Client, TenantList};

use crate::history::{Add, Outcome, Read};

/// What the clients did.
#[derive(Default)]
pub struct Recorded {
    pub adds: Vec<Add>,
    pub reads: Vec<Read>,
}

/// The writers' tenants in a list, as the history's numbers, sorted.
pub fn numbers(list: &TenantList) -> Vec<u32> {
    let mut names: Vec<u32> = list.tenants.iter().filter_map(|t| t.name.strip_prefix('c')?.parse().ok()).collect();
    names.sort_unstable();
    names
}

/// Clients running until stopped.
pub struct Workload {
    /// Since when the history's times count.
    pub origin: Instant,
    recorded: Arc<Mutex<Recorded>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// A writer per client in `writers` (each pausing 100 ms after a failed
    /// write), and a reader per list in `readers` that asks its clients in
    /// turn, one read every `read_every`.
    pub fn start(writers: Vec<Client>, readers: Vec<Vec<Client>>, read_every: Duration) -> Workload {
        let origin = Instant::now();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for client in writers {
            let (recorded, stop, next) = (recorded.clone(), stop.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let name = next.fetch_add(1, Ordering::Relaxed);
                    let invoked = origin.elapsed();
                    let result = client.create_tenant(&format!("c{name}")).await;
                    let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Unknown };
                    let add = Add { name, invoked, completed: origin.elapsed(), outcome };
                    recorded.lock().expect("lock").adds.push(add);
                    if result.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        for (r, clients) in readers.into_iter().enumerate() {
            let (recorded, stop) = (recorded.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                for i in r.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let invoked = origin.elapsed();
                    if let Ok(list) = clients[i % clients.len()].tenants().await {
                        let read = Read { invoked, completed: origin.elapsed(), names: numbers(&list) };
                        recorded.lock().expect("lock").reads.push(read);
                    }
                    tokio::time::sleep(read_every).await;
                }
            }));
        }
        Workload { origin, recorded, stop, tasks }
    }

    /// Stops the clients and returns what they did.
    pub async fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("client");
        }
        std::mem::take(&mut *self.recorded.lock().expect("lock"))
    }
}
