//! The edgeHub side of the binary: a [`Forwarder`] over `edge_client`, and the module twin loop
//! (desired properties -> live settings -> reported properties).

use std::sync::Arc;

use anyhow::Context;
use edge_client::{ClientError, ClientOptions, Event, Identity, ModuleClient};
use mqtt_server::{BoxFuture, ForwardError, Forwarder, Message, ServerHandle};

/// Sends messages to edgeHub outputs; `send_output` resolves on edgeHub's PUBACK.
pub struct EdgeHubForwarder {
    client: Arc<ModuleClient>,
}

impl Forwarder for EdgeHubForwarder {
    fn forward(&self, output: String, m: Message) -> BoxFuture<'_, Result<(), ForwardError>> {
        Box::pin(async move {
            self.client
                .send_output(&output, m)
                .await
                .map_err(|e| match e {
                    // no retry can make these succeed
                    ClientError::TooLarge { .. }
                    | ClientError::TopicTooLong { .. }
                    | ClientError::Usage(_)
                    | ClientError::Wire(_) => ForwardError::permanent(e.to_string()),
                    _ => ForwardError::transient(e.to_string()),
                })
        })
    }

    /// The exact check: the size as edgeHub counts it and the length of the topic this module's
    /// identity builds for the message (MQTT's 65,535 bytes).
    fn check(&self, output: &str, m: &Message) -> Result<(), mqtt_server::limits::Refused> {
        match self.client.check_output(output, m.clone()) {
            Ok(()) => Ok(()),
            Err(ClientError::TooLarge { size, limit }) => {
                Err(mqtt_server::limits::message_too_large(size, limit))
            }
            Err(ClientError::TopicTooLong { len, limit }) => Err(mqtt_server::limits::Refused {
                exceeded: mqtt_server::limits::Exceeded::Properties,
                detail: format!("the edgeHub topic with its property bag would be {len} bytes; MQTT allows {limit}: use a shorter topic and fewer or shorter properties"),
            }),
            // other errors (a bad output name) are the module's settings, not the device's doing
            Err(_) => Ok(()),
        }
    }
}

/// The twin loop, started once the server exists.
pub struct Twin {
    client: Arc<ModuleClient>,
    events: edge_client::Events,
}

/// Connects to edgeHub with the module identity from the environment.
pub async fn connect() -> anyhow::Result<(Arc<dyn Forwarder>, Twin)> {
    let identity = Identity::from_environment().await.context(
        "no IoT Edge module identity: run under IoT Edge (IOTEDGE_* variables) or set EdgeHubConnectionString, or use --sink stdout",
    )?;
    let (client, events) = ModuleClient::connect(identity, ClientOptions::default())
        .await
        .context("cannot connect to edgeHub")?;
    let client = Arc::new(client);
    Ok((
        Arc::new(EdgeHubForwarder {
            client: client.clone(),
        }),
        Twin { client, events },
    ))
}

impl Twin {
    /// Waits (at most `within`) for the first full twin and applies it, so that the first
    /// device messages already follow the twin's settings.
    pub async fn initial(&mut self, server: &ServerHandle, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut connected = true;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if self.handle(event, server, &mut connected).await {
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(
                        ?within,
                        "no module twin from edgeHub yet; starting with the environment's settings"
                    );
                    return;
                }
            }
        }
    }

    /// Applies the twin's desired properties to the running server and reports back what is in
    /// force, until the client's event stream ends.
    pub async fn run(mut self, server: ServerHandle) {
        let mut connected = true;
        while let Some(event) = self.events.recv().await {
            self.handle(event, &server, &mut connected).await;
        }
        tracing::warn!("edgeHub event stream ended; twin updates stop");
    }

    /// Handles one event; returns true when it was a full twin.
    async fn handle(&mut self, event: Event, server: &ServerHandle, connected: &mut bool) -> bool {
        let desired = match event {
            Event::Twin(twin) => Some((twin.get("desired").cloned().unwrap_or_default(), true)),
            Event::DesiredPatch(patch) => Some((patch, false)),
            Event::Connected => {
                *connected = true;
                tracing::info!("connected to edgeHub");
                server.metrics().edgehub_connected.set(1);
                None
            }
            Event::Disconnected(reason) => {
                // edge_client logs every failed attempt; say it here once per outage
                if *connected {
                    tracing::warn!(reason = %reason, "disconnected from edgeHub; messages wait in the buffer");
                }
                *connected = false;
                server.metrics().edgehub_connected.set(0);
                None
            }
            Event::Method(call) => {
                // this module has no direct methods; answer so the caller does not wait
                let name = call.name.clone();
                call.respond(
                    404,
                    serde_json::json!({"error": format!("unknown method {name:?}")}),
                );
                None
            }
            _ => None,
        };
        let Some((desired, full)) = desired else {
            return false;
        };
        let desired = if desired.is_null() {
            serde_json::json!({})
        } else {
            desired
        };
        let report = match server.apply_desired(&desired, full) {
            Ok((routing, warnings)) => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "module twin");
                }
                tracing::info!(output = %routing.output, mappings = routing.topic_outputs.len(),
                    enrich_device_id = routing.enrich_device_id, max_payload = routing.max_payload,
                    "settings from the module twin applied");
                let mut r = routing.reported();
                r["error"] = serde_json::Value::Null;
                r["warnings"] = serde_json::json!(warnings);
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "module twin desired properties refused; settings unchanged");
                let mut r = server.routing().reported();
                r["error"] = serde_json::Value::String(e.to_string());
                r
            }
        };
        if let Err(e) = self
            .client
            .update_reported(serde_json::json!({ "mqttServer": report }))
            .await
        {
            tracing::warn!(error = %e, "cannot report settings to the module twin");
        }
        full
    }
}
