//! A node's side: its key under a lease, re-put with its load, revoked on a clean exit.

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use pushcenter_node::{BoxFuture, NodeInfo, Registrar};
use tokio::sync::watch;
use tracing::{debug, info, warn};

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
}

impl EtcdRegistrar {
    /// Starts the background task that keeps the node's key; call inside the runtime.
    pub fn start(cfg: EtcdConfig, node_id: &str) -> EtcdRegistrar {
        let (desired, desired_rx) = watch::channel(Desired::default());
        let (written_tx, written) = watch::channel(0);
        let key = cfg.node_key(node_id);
        tokio::spawn(keep(cfg, key, desired_rx, written_tx));
        EtcdRegistrar {
            desired,
            written,
            me: Mutex::new(None),
            draining: Mutex::new(false),
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

    fn nodes(&self) -> Vec<NodeInfo> {
        self.me
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .into_iter()
            .collect()
    }
}

/// Keeps the key alive across etcd outages: (re)connect, grant a lease, put, keep the
/// lease alive, put again on every change; revoke on deregister.
async fn keep(
    cfg: EtcdConfig,
    key: String,
    mut desired: watch::Receiver<Desired>,
    written: watch::Sender<u64>,
) {
    let mut logged_down = false;
    loop {
        match session(&cfg, &key, &mut desired, &written).await {
            Ok(()) => return,
            Err(e) => {
                if !logged_down {
                    warn!(error = %e, "etcd: registration lost; retrying");
                    logged_down = true;
                }
                debug!(error = %e, "etcd registration error");
            }
        }
        if desired.borrow().gone {
            // Shutting down and etcd is away: the lease expires by itself.
            let _ = written.send(u64::MAX);
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn session(
    cfg: &EtcdConfig,
    key: &str,
    desired: &mut watch::Receiver<Desired>,
    written: &watch::Sender<u64>,
) -> Result<()> {
    let mut client = Client::connect(&cfg.endpoints, Some(cfg.connect_options()))
        .await
        .map_err(Error::EtcdConnect)?;
    let ttl = i64::try_from(cfg.ttl.as_secs().max(1)).unwrap_or(10);
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(Error::request("lease grant"))?
        .id();
    let (mut keeper, mut acks): (LeaseKeeper, LeaseKeepAliveStream) = client
        .lease_keep_alive(lease)
        .await
        .map_err(Error::request("lease keep-alive"))?;
    // Announced once the key is written, not when the lease is granted.
    let mut announced = false;
    let mut tick = tokio::time::interval(cfg.ttl / 3);
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
                if !announced {
                    info!(key, lease, "registered in etcd");
                    announced = true;
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
                    _ => return Err(Error::LeaseExpired),
                }
            }
        }
    }
}
