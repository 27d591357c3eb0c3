//! A node's side: its key under a lease, re-put with its load, revoked on a clean exit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use pushcenter_node::{BoxFuture, NodeInfo, Registrar};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{Error, EtcdConfig, Result};

/// What the node wants in etcd; `version` grows with every change.
#[derive(Clone, Default)]
struct Desired {
    info: Option<NodeInfo>,
    version: u64,
    gone: bool,
}

pub struct EtcdRegistrar {
    desired: watch::Sender<Desired>,
    /// The version etcd has (u64::MAX once deregistered).
    written: watch::Receiver<u64>,
    me: Mutex<Option<NodeInfo>>,
    draining: Mutex<bool>,
    /// Why etcd refuses this node, while it does (for `/readyz`).
    problem: Arc<Mutex<Option<String>>>,
    /// For [`Registrar::peers`]: a client connected at the first call, kept.
    cfg: EtcdConfig,
    reader: Arc<tokio::sync::Mutex<Option<Client>>>,
}

impl EtcdRegistrar {
    /// Starts the background task that keeps the node's key; call inside the runtime.
    pub fn start(cfg: EtcdConfig, node_id: &str) -> EtcdRegistrar {
        let (desired, desired_rx) = watch::channel(Desired::default());
        let (written_tx, written) = watch::channel(0);
        let key = cfg.node_key(node_id);
        let problem = Arc::new(Mutex::new(None));
        tokio::spawn(keep(
            cfg.clone(),
            key,
            desired_rx,
            written_tx,
            problem.clone(),
        ));
        EtcdRegistrar {
            desired,
            written,
            me: Mutex::new(None),
            draining: Mutex::new(false),
            problem,
            cfg,
            reader: Arc::default(),
        }
    }

    fn publish(&self, info: NodeInfo) -> u64 {
        {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            *me = Some(info.clone());
        }
        let mut version = 0;
        self.desired.send_modify(|d| {
            d.version += 1;
            d.info = Some(info);
            version = d.version;
        });
        version
    }

    /// Waits until etcd has `version` (or a newer one).
    fn written(&self, version: u64) -> BoxFuture<()> {
        let mut written = self.written.clone();
        Box::pin(async move {
            let _ = written.wait_for(|w| *w >= version).await;
        })
    }
}

impl Registrar for EtcdRegistrar {
    fn report(&self, mut info: NodeInfo) {
        info.draining |= *self.draining.lock().unwrap_or_else(|e| e.into_inner());
        self.publish(info);
    }

    fn set_draining(&self) -> BoxFuture<()> {
        {
            let mut d = self.draining.lock().unwrap_or_else(|e| e.into_inner());
            *d = true;
        }
        let current = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match current {
            Some(mut info) => {
                info.draining = true;
                let v = self.publish(info);
                self.written(v)
            }
            None => Box::pin(std::future::ready(())),
        }
    }

    fn deregister(&self) -> BoxFuture<()> {
        self.desired.send_modify(|d| {
            d.gone = true;
            d.version += 1;
        });
        self.written(u64::MAX)
    }

    fn peers(&self) -> BoxFuture<std::result::Result<Vec<String>, String>> {
        let (cfg, reader) = (self.cfg.clone(), self.reader.clone());
        Box::pin(async move {
            let mut held = reader.lock().await;
            if held.is_none() {
                let options = cfg.connect_options().map_err(|e| e.to_string())?;
                let client = Client::connect(&cfg.endpoints, Some(options))
                    .await
                    .map_err(|e| format!("etcd: {e}"))?;
                *held = Some(client);
            }
            let Some(client) = held.as_mut() else {
                return Err("etcd: no client".into());
            };
            let prefix = cfg.nodes_prefix();
            let listing = client
                .get(
                    prefix.as_str(),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await;
            match listing {
                Ok(l) => Ok(l
                    .kvs()
                    .iter()
                    .filter_map(|kv| {
                        kv.key_str()
                            .ok()?
                            .strip_prefix(prefix.as_str())
                            .map(str::to_owned)
                    })
                    .collect()),
                Err(e) => {
                    // Connected afresh at the next call.
                    *held = None;
                    Err(format!("etcd: {e}"))
                }
            }
        })
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.me
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .into_iter()
            .collect()
    }
}

/// What survives from one etcd session to the next.
#[derive(Default)]
struct Carry {
    /// The lease of the node's key: a new session takes it over while etcd still has
    /// it, so a reconnect (a leader change, a refused token) keeps the registration.
    lease: Option<i64>,
    /// The key is written in this session.
    registered: bool,
}

/// Keeps the key alive across etcd outages: (re)connect, take over or grant a lease,
/// put, keep the lease alive, put again on every change; revoke on deregister.
async fn keep(
    cfg: EtcdConfig,
    key: String,
    mut desired: watch::Receiver<Desired>,
    written: watch::Sender<u64>,
    problem: Arc<Mutex<Option<String>>>,
) {
    let mut carry = Carry::default();
    let mut logged_down = false;
    let mut logged_refusal: Option<String> = None;
    loop {
        carry.registered = false;
        let result = session(&cfg, &key, &mut desired, &written, &mut carry, &problem).await;
        if carry.registered {
            logged_down = false;
            logged_refusal = None;
        }
        let mut pause = Duration::from_millis(500);
        match result {
            Ok(()) => return,
            Err(e) => match e.refusal() {
                Some(reason) => {
                    if logged_refusal.as_ref() != Some(&reason) {
                        error!(
                            endpoints = %cfg.endpoint_list(),
                            %reason,
                            "etcd refused this node's credentials: not registered, clients \
                             are still served; retrying every 5s"
                        );
                        logged_refusal = Some(reason.clone());
                    }
                    set(
                        &problem,
                        Some(format!("etcd refused the credentials: {reason}")),
                    );
                    // A refusal lasts until someone changes a config: no need to hammer.
                    pause = Duration::from_secs(5);
                }
                None => {
                    if !logged_down {
                        warn!(endpoints = %cfg.endpoint_list(), error = %e, "etcd: registration lost; retrying");
                        logged_down = true;
                    }
                    debug!(error = %e, "etcd registration error");
                }
            },
        }
        if desired.borrow().gone {
            // Shutting down and etcd is away: the lease expires by itself.
            let _ = written.send(u64::MAX);
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

fn set(problem: &Mutex<Option<String>>, value: Option<String>) {
    *problem.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

/// The lease of this session: the carried one while etcd still has it, else a new one.
async fn lease(
    client: &mut Client,
    ttl: i64,
    carry: &mut Carry,
) -> Result<(i64, LeaseKeeper, LeaseKeepAliveStream)> {
    if let Some(id) = carry.lease {
        match client.lease_keep_alive(id).await {
            Ok((keeper, acks)) => {
                debug!(lease = id, "etcd: kept the lease over a reconnect");
                return Ok((id, keeper, acks));
            }
            // etcd-client's answer for a lease etcd no longer has.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => carry.lease = None,
            Err(e) => return Err(Error::request("lease keep-alive")(e)),
        }
    }
    let id = client
        .lease_grant(ttl, None)
        .await
        .map_err(Error::request("lease grant"))?
        .id();
    carry.lease = Some(id);
    let (keeper, acks) = client
        .lease_keep_alive(id)
        .await
        .map_err(Error::request("lease keep-alive"))?;
    Ok((id, keeper, acks))
}

async fn session(
    cfg: &EtcdConfig,
    key: &str,
    desired: &mut watch::Receiver<Desired>,
    written: &watch::Sender<u64>,
    carry: &mut Carry,
    problem: &Mutex<Option<String>>,
) -> Result<()> {
    let mut client = Client::connect(&cfg.endpoints, Some(cfg.connect_options()?))
        .await
        .map_err(Error::EtcdConnect)?;
    let ttl = i64::try_from(cfg.ttl.as_secs().max(1)).unwrap_or(10);
    let (lease, mut keeper, mut acks) = lease(&mut client, ttl, carry).await?;
    let mut tick = tokio::time::interval(cfg.ttl / 3);
    // The key is put again in every session: etcd may have lost it with its data.
    let mut put_version = 0;
    loop {
        let want = desired.borrow_and_update().clone();
        if want.gone {
            let _ = client.lease_revoke(lease).await;
            let _ = written.send(u64::MAX);
            info!(key, "deregistered from etcd");
            return Ok(());
        }
        if want.version > put_version {
            if let Some(info) = &want.info {
                let value = serde_json::to_string(info).unwrap_or_default();
                client
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map_err(Error::request("put"))?;
                // Announced once the key is written, not when the lease is granted.
                if !carry.registered {
                    info!(key, lease, "registered in etcd");
                    carry.registered = true;
                    set(problem, None);
                }
            }
            put_version = want.version;
            let _ = written.send(put_version);
        }
        tokio::select! {
            _ = desired.changed() => {}
            _ = tick.tick() => {
                keeper
                    .keep_alive()
                    .await
                    .map_err(Error::request("lease keep-alive"))?;
                match acks.message().await.map_err(Error::request("lease keep-alive"))? {
                    Some(r) if r.ttl() > 0 => {}
                    // The lease is gone (etcd restarted without its data, or we were away
                    // past the TTL): start over with a new one.
                    _ => {
                        carry.lease = None;
                        return Err(Error::LeaseExpired);
                    }
                }
            }
        }
    }
}
