//! Raft messages between replicas, over HTTP/2.
//!
//! Each peer gets a sender task with a bounded queue. The task takes every
//! message queued, encodes the lot as one body (`u32` length, then the
//! protobuf message, repeated) and posts it to the peer's `/v1/raft` on one
//! long-lived HTTP/2 connection. Delivery is best effort, as Raft expects:
//! a full queue or a failed post drops messages, and Raft sends them again.
//! The set of peers follows the cluster's membership: a peer added gets a
//! sender task, a peer removed (or moved to another URL) loses its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use crate::replica::{SnapshotReporter, Transport};

/// Messages a peer's queue holds before new ones are dropped.
const QUEUE: usize = 4096;
/// Most bytes one post carries (a larger single message goes alone).
const BATCH_BYTES: usize = 4 << 20;
/// Largest body `/v1/raft` accepts: snapshots carry every module.
pub const MAX_BODY: usize = 2 << 30;

/// Sends Raft messages to peers over HTTP/2.
#[derive(Debug)]
pub struct HttpTransport {
    self_id: u64,
    http: reqwest::Client,
    /// Each peer's URL and queue.
    peers: RwLock<HashMap<u64, (String, mpsc::Sender<Message>)>>,
    /// Told whether each snapshot sent arrived.
    reporter: Arc<RwLock<Option<SnapshotReporter>>>,
}

impl HttpTransport {
    /// Starts a sender task for every peer in `peers` (id to base URL) but
    /// `self_id`, on the current tokio runtime. Posts carry `admin_token`:
    /// a peer takes Raft messages only from its cluster.
    pub fn start(self_id: u64, peers: &BTreeMap<u64, String>, admin_token: &str) -> Result<Arc<Self>, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::try_from(format!("Bearer {admin_token}"))
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let http = wasmgrid_api::tls::client_builder()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the CA certificates; trusting the system's only");
                reqwest::Client::builder()
            })
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .default_headers(headers)
            .build()?;
        let transport =
            HttpTransport { self_id, http, peers: RwLock::new(HashMap::new()), reporter: Arc::new(RwLock::new(None)) };
        transport.set_members(peers);
        Ok(Arc::new(transport))
    }
}

impl Transport for HttpTransport {
    fn send(&self, message: Message) {
        let peers = self.peers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some((_, queue)) = peers.get(&message.to) else { return };
        // A full queue means the peer is not keeping up or is down.
        if let Err(e) = queue.try_send(message) {
            let message = e.into_inner();
            if is_snapshot(&message) {
                report_lost(&self.reporter, message.to);
            }
        }
    }

    fn on_snapshot_lost(&self, reporter: SnapshotReporter) {
        *self.reporter.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reporter);
    }

    fn set_members(&self, members: &BTreeMap<u64, String>) {
        let mut peers = self.peers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Dropping a queue's sender ends its task.
        peers.retain(|id, (url, _)| members.get(id) == Some(url));
        for (&id, url) in members {
            if id == self.self_id || peers.contains_key(&id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(send_loop(format!("{url}/v1/raft"), id, self.http.clone(), rx, self.reporter.clone()));
            peers.insert(id, (url.clone(), tx));
        }
    }
}

type Reporter = Arc<RwLock<Option<SnapshotReporter>>>;

/// Tells the replica that the snapshot sent to `to` was lost.
fn report_lost(reporter: &Reporter, to: u64) {
    if let Some(r) = reporter.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
        r.lost(to);
    }
}

fn is_snapshot(message: &Message) -> bool {
    message.get_msg_type() == MessageType::MsgSnapshot
}

async fn send_loop(
    url: String,
    to: u64,
    http: reqwest::Client,
    mut queue: mpsc::Receiver<Message>,
    reporter: Reporter,
) {
    let mut failing = false;
    while let Some(first) = queue.recv().await {
        let mut body = Vec::new();
        let mut snapshot = is_snapshot(&first);
        encode(&first, &mut body);
        while body.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(m) => {
                    snapshot |= is_snapshot(&m);
                    encode(&m, &mut body);
                }
                Err(_) => break,
            }
        }
        let arrived = match http.post(&url).body(body).send().await {
            Ok(response) if response.status().is_success() => {
                if failing {
                    tracing::info!(%url, "raft peer reachable again");
                    failing = false;
                }
                true
            }
            Ok(response) => {
                tracing::warn!(%url, status = %response.status(), "raft peer refused messages");
                tokio::time::sleep(Duration::from_millis(50)).await;
                false
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%url, "raft peer unreachable: {e}");
                    failing = true;
                }
                // Do not spin on a dead peer; Raft resends what matters.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Ok(m) = queue.try_recv() {
                    snapshot |= is_snapshot(&m);
                }
                false
            }
        };
        // A snapshot that arrived is acknowledged by the peer itself once
        // installed; one that did not must be said, or raft-rs waits.
        if snapshot && !arrived {
            report_lost(&reporter, to);
        }
    }
}

fn encode(message: &Message, out: &mut Vec<u8>) {
    let bytes = message.write_to_bytes().unwrap_or_default();
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
}

/// A body that is not length-prefixed Raft messages.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body ends inside a length prefix.
    #[error("truncated length prefix")]
    Prefix,
    /// A message is shorter than its prefix says.
    #[error("message of {len} bytes truncated to {left}")]
    Truncated {
        /// What the prefix says.
        len: usize,
        /// What is left of the body.
        left: usize,
    },
    /// A message does not parse.
    #[error("{0}")]
    Message(#[from] protobuf::ProtobufError),
}

/// Decodes a body of length-prefixed messages.
pub fn decode(mut body: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_first_chunk::<4>().ok_or(DecodeError::Prefix)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(DecodeError::Truncated { len, left: rest.len() });
        }
        let (bytes, rest) = rest.split_at(len);
        messages.push(Message::parse_from_bytes(bytes)?);
        body = rest;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let mut body = Vec::new();
        for i in 1..=3u64 {
            let m = Message { to: 2, from: 1, term: i, commit: i * 10, ..Default::default() };
            encode(&m, &mut body);
        }
        let back = decode(&body).expect("decodes");
        assert_eq!(back.iter().map(|m| (m.term, m.commit)).collect::<Vec<_>>(), vec![(1, 10), (2, 20), (3, 30)]);
        assert!(decode(&body[..body.len() - 1]).is_err());
        assert!(decode(&[0, 0]).is_err());
        assert!(decode(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).is_err());
    }
}
