//! `run_module`: identity, connection, twin loop and shutdown signal, in that order, for a module whose
//! settings are layered (feature `client`).

use std::future::Future;
use std::pin::Pin;

use edge_client::{ClientError, ClientOptions, Events, Identity, ModuleClient};

use crate::layers::{Layered, ModuleSettings};
use crate::twin::{self, Reported, TwinLoop, TwinSettings};

/// Why a module could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// edge-client's message says which variables to set.
    #[error("no IoT Edge module identity: {0}")]
    Identity(ClientError),
    #[error("cannot connect to edgeHub: {0}")]
    Connect(ClientError),
}

/// The identity from the environment and a connection to edgeHub.
pub async fn connect(options: ClientOptions) -> Result<(ModuleClient, Events), RuntimeError> {
    let identity = Identity::from_environment()
        .await
        .map_err(RuntimeError::Identity)?;
    ModuleClient::connect(identity, options)
        .await
        .map_err(RuntimeError::Connect)
}

/// What a running module gets.
pub struct Module<T> {
    /// The connection (clones share it).
    pub client: ModuleClient,
    /// Settings from the twin, and the other events.
    pub twin: TwinLoop<T>,
    /// Resolves on SIGTERM or SIGINT.
    pub shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<T> std::fmt::Debug for Module<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("client", &self.client)
            .finish()
    }
}

/// Sets up tracing, connects with the identity from the environment, starts the twin loop over the
/// layered settings (reported under `names`), and runs `body` until it returns; then flushes and
/// closes the connection.
pub async fn run_module<T, F, Fut, R>(
    layered: &Layered<T>,
    names: Reported,
    options: ClientOptions,
    body: F,
) -> Result<R, RuntimeError>
where
    T: ModuleSettings + Clone + Send + Sync + 'static,
    F: FnOnce(Module<T>) -> Fut,
    Fut: Future<Output = R>,
{
    crate::init_tracing();
    let (client, events) = connect(options).await?;
    tracing::info!("connected to edgeHub; settings come from the module twin");
    let twin = twin::spawn(client.clone(), events, TwinSettings::new(layered), names);
    let out = body(Module {
        client: client.clone(),
        twin,
        shutdown: Box::pin(crate::shutdown_signal()),
    })
    .await;
    client.shutdown().await;
    Ok(out)
}
