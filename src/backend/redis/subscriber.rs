//! The subscription to [`EVENTS_CHANNEL`] (a shard channel on a cluster:
//! `SSUBSCRIBE`/`SPUBLISH`), on a `SubscriberClient` of its own, forwarded
//! to this instance's receivers.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::{clients::SubscriberClient, prelude::*};
use tokio::sync::broadcast;

use crate::backend::{Event, Notice, EVENTS_CHANNEL};

pub(super) struct Subscriber {
    client: SubscriberClient,
    /// Whether the subscription stands (for `/readyz`).
    subscribed: Arc<AtomicBool>,
    /// Where what arrives goes: every local receiver.
    events: broadcast::Sender<Notice>,
}

async fn subscribe_events(client: &SubscriberClient, cluster: bool) -> Result<(), fred::error::Error> {
    if cluster {
        client.ssubscribe(EVENTS_CHANNEL).await
    } else {
        client.subscribe(EVENTS_CHANNEL).await
    }
}

impl Subscriber {
    /// Connects, subscribes to the events channel and forwards what arrives
    /// to local receivers. After every reconnect (on a cluster also after a
    /// failover moved the channel's slot to another node) it subscribes
    /// again *before* telling receivers to resync, so that the resync sweep
    /// cannot run ahead of a subscription that is not back yet.
    pub(super) async fn start(client: SubscriberClient, cluster: bool) -> Result<Self, fred::error::Error> {
        client.init().await?;
        let (events, _) = broadcast::channel(1024);
        let subscribed = Arc::new(AtomicBool::new(false));
        let mut messages = client.message_rx();
        let mut reconnects = client.reconnect_rx();
        subscribe_events(&client, cluster).await?;
        subscribed.store(true, Ordering::Release);

        let forward = events.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let Some(text) = message.value.as_str() else { continue };
                        match serde_json::from_str::<Event>(&text) {
                            Ok(event) => {
                                let _ = forward.send(Notice::Event(event));
                            }
                            Err(err) => tracing::warn!(%err, "ignoring malformed event on {EVENTS_CHANNEL}"),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event subscriber fell behind; resyncing");
                        let _ = forward.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });

        let (resubscriber, forward, up) = (client.clone(), events.clone(), subscribed.clone());
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(server) => {
                        up.store(false, Ordering::Release);
                        // Retry until the subscription is back: an instance that
                        // silently stops hearing logouts is the failure to avoid.
                        // (Subscribing again where the subscription still
                        // stands is harmless.)
                        let mut delay = Duration::from_millis(50);
                        while let Err(err) = subscribe_events(&resubscriber, cluster).await {
                            tracing::warn!(%err, "resubscribing to {EVENTS_CHANNEL} failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        up.store(true, Ordering::Release);
                        tracing::info!(%server, "event subscriber reconnected and resubscribed; resyncing");
                        let _ = forward.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = forward.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(Self { client, subscribed, events })
    }

    /// A new local receiver of what the subscription hears.
    pub(super) fn receiver(&self) -> broadcast::Receiver<Notice> {
        self.events.subscribe()
    }

    /// Whether this instance hears events now.
    pub(super) fn stands(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.client.is_connected()
    }

    pub(super) async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}
