//! A hub on 127.0.0.1 over a test's folder (`<dir>/data`, the CA in `<dir>/pki`), module processes
//! against it, and rumqttc clients that speak the module protocol (TLS trusting the dev CA).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use crate::pki::DevPki;
use crate::{Hub, HubConfig, HubHandle, HubListeners, ModuleIdentity};
use base64::Engine as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, TlsConfiguration, Transport};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The IoT Hub host name of the test hub.
pub const HUB: &str = "edge-dev.local";
/// The device id of the test hub.
pub const DEVICE: &str = "dev1";
/// How long a helper waits for one event.
pub const WAIT: Duration = Duration::from_secs(10);
/// The modules a hub has unless [`TestHubBuilder::modules`] says otherwise.
pub const DEFAULT_MODULES: [&str; 3] = ["A", "B", "C"];

pub fn parse_routes(routes: &[(&str, &str)]) -> Vec<edge_routes::Route> {
    routes
        .iter()
        .map(|(n, t)| edge_routes::Route::parse(n, t).unwrap())
        .collect()
}

/// The primary key of `module` on every test hub.
pub fn key_of(module: &str) -> Vec<u8> {
    // Distinct fixed keys per module, so a restarted hub knows the same identities.
    let mut k = module.as_bytes().to_vec();
    k.resize(32, 7);
    k
}

/// [`key_of`] in base64, as connection strings carry it.
pub fn key_b64(module: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(key_of(module))
}

/// A running hub; dropping it shuts the hub down.
pub struct TestHub {
    pub handle: HubHandle,
    pub tls_addr: SocketAddr,
    pub plain_addr: SocketAddr,
    pub pki: DevPki,
    stop: Option<oneshot::Sender<()>>,
}

/// What a [`TestHub`] starts with: modules (default [`DEFAULT_MODULES`]), routes, desired
/// properties, settings and ports.
pub struct TestHubBuilder {
    dir: PathBuf,
    modules: Vec<String>,
    routes: Vec<edge_routes::Route>,
    desired: BTreeMap<String, Value>,
    config: HubConfig,
    ports: (u16, u16),
}

impl TestHubBuilder {
    /// The module identities (each with the key [`key_of`] gives it).
    pub fn modules(mut self, modules: &[&str]) -> Self {
        self.modules = modules.iter().map(|m| m.to_string()).collect();
        self
    }

    /// One more route, `(name, text)` as a manifest writes it.
    pub fn route(mut self, name: &str, text: &str) -> Self {
        self.routes.extend(parse_routes(&[(name, text)]));
        self
    }

    /// These routes (replacing any given before).
    pub fn routes(mut self, routes: Vec<edge_routes::Route>) -> Self {
        self.routes = routes;
        self
    }

    /// The desired properties of `module`'s twin at start.
    pub fn desired(mut self, module: &str, desired: Value) -> Self {
        self.desired.insert(module.to_string(), desired);
        self
    }

    /// Changes the hub's settings (the data folder and names are set already).
    pub fn config(mut self, tweak: impl FnOnce(&mut HubConfig)) -> Self {
        tweak(&mut self.config);
        self
    }

    /// Listens on these (TLS, plain) ports; 0: any free port. A port given is bound again and again
    /// for up to 10 s, for a hub restarted where the one before it was.
    pub fn ports(mut self, tls: u16, plain: u16) -> Self {
        self.ports = (tls, plain);
        self
    }

    pub async fn start(self) -> TestHub {
        let pki = DevPki::load_or_create(&self.dir.join("pki"), &[HUB]).unwrap();
        let modules = self
            .modules
            .iter()
            .map(|m| ModuleIdentity {
                module_id: m.clone(),
                primary_key: key_of(m),
            })
            .collect();
        let table = edge_routes::RouteTable::new(self.routes).unwrap();
        let tls = bind(self.ports.0).await;
        let plain = bind(self.ports.1).await;
        let tls_addr = tls.local_addr().unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let listeners = HubListeners {
            tls: Some((tls, pki.server_config())),
            plain: Some(plain),
        };
        let handle = Hub::start(
            self.config,
            modules,
            table,
            self.desired,
            listeners,
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
        TestHub {
            handle,
            tls_addr,
            plain_addr,
            pki,
            stop: Some(stop_tx),
        }
    }
}

/// A listener on 127.0.0.1 `port`; a given port is tried for up to 10 s (it may be held a little
/// longer by the hub that had it).
async fn bind(port: u16) -> TcpListener {
    for _ in 0..100 {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if port == 0 => panic!("no free port on 127.0.0.1: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("127.0.0.1:{port} stayed in use for 10 s");
}

impl TestHub {
    /// A hub over `dir` (its data in `<dir>/data`, its CA in `<dir>/pki`).
    pub fn builder(dir: &Path) -> TestHubBuilder {
        TestHubBuilder {
            dir: dir.to_path_buf(),
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            routes: Vec::new(),
            desired: BTreeMap::new(),
            config: HubConfig {
                iothub_hostname: HUB.into(),
                device_id: DEVICE.into(),
                data_dir: dir.join("data"),
                ..HubConfig::default()
            },
            ports: (0, 0),
        }
    }

    /// Starts a hub with modules A, B, C and these routes `(name, text)`.
    pub async fn start(
        dir: &Path,
        routes: &[(&str, &str)],
        desired: BTreeMap<String, Value>,
    ) -> TestHub {
        Self::start_with(dir, parse_routes(routes), desired, |_| {}).await
    }

    /// As [`TestHub::start`] with parsed routes and changed settings.
    pub async fn start_with(
        dir: &Path,
        routes: Vec<edge_routes::Route>,
        desired: BTreeMap<String, Value>,
        tweak: impl FnOnce(&mut HubConfig),
    ) -> TestHub {
        Self::start_at(dir, routes, desired, tweak, (0, 0)).await
    }

    /// As [`TestHub::start_with`] on these (TLS, plain) ports (0: any free port).
    pub async fn start_at(
        dir: &Path,
        routes: Vec<edge_routes::Route>,
        desired: BTreeMap<String, Value>,
        tweak: impl FnOnce(&mut HubConfig),
        ports: (u16, u16),
    ) -> TestHub {
        let mut b = Self::builder(dir)
            .routes(routes)
            .config(tweak)
            .ports(ports.0, ports.1);
        b.desired = desired;
        b.start().await
    }

    /// The CA certificate (PEM) a module trusts to reach this hub (`EdgeModuleCACertificateFile`).
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca_path
    }

    /// Waits (bounded, 30 s) until `module`'s reported properties satisfy `ok`; returns them.
    pub async fn wait_reported(&self, module: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..300 {
            if let Some(t) = self.handle.twin(module) {
                last = t["reported"].clone();
                if ok(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{module}'s reported properties never matched: {last}");
    }

    /// Stops the hub and waits until it has closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let h = self.handle.clone();
        drop(self);
        tokio::time::timeout(WAIT, h.closed())
            .await
            .expect("hub did not stop");
    }

    /// Lets go of the hub without shutting it down (its shutdown future never resolves): for tests that
    /// then drop the runtime under it, as close to a crash as one process gets.
    pub fn abandon(mut self) {
        if let Some(s) = self.stop.take() {
            std::mem::forget(s);
        }
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.pki, false)
    }
}

/// The connection string of `module` on the test hub (its key from [`key_of`]; the gateway at
/// `localhost`, a name the hub's certificate carries).
pub fn connection_string(module: &str) -> String {
    format!(
        "HostName={HUB};GatewayHostName=localhost;DeviceId={DEVICE};ModuleId={module};SharedAccessKey={}",
        key_b64(module)
    )
}

/// A module's process, killed (and waited for) when dropped.
pub struct ModuleProcess(pub Child);

impl ModuleProcess {
    /// A command for the module binary `bin` as `module` of `hub`, with the environment IoT Edge
    /// gives a module (`EdgeHubConnectionString`, `EdgeModuleCACertificateFile`,
    /// `IOTEDGE_GATEWAYPORT`) and nothing else of the test's; stdout goes nowhere. Add the
    /// module's own settings, then [`ModuleProcess::spawn`].
    pub fn command(bin: &str, hub: &TestHub, module: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("EdgeHubConnectionString", connection_string(module))
            .env("EdgeModuleCACertificateFile", hub.ca_file())
            .env("IOTEDGE_GATEWAYPORT", hub.tls_addr.port().to_string())
            .stdout(std::process::Stdio::null());
        cmd
    }

    pub fn spawn(cmd: &mut Command) -> ModuleProcess {
        ModuleProcess(cmd.spawn().expect("the module binary starts"))
    }
}

impl Drop for ModuleProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago (for a server the test starts in another process).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("the bound address").port()
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A rustls client trusting the dev CA; `python_like` restricts it to TLS 1.2 with ECDHE AES-GCM /
/// ChaCha20 as the Python SDK does.
pub fn client_config(pki: &DevPki, python_like: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if python_like {
        provider.cipher_suites.retain(|s| {
            matches!(
                s.suite(),
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

pub fn token(module: &str, key_b64: &str, expiry: u64) -> String {
    let sr = edge_client::wire::sas::resource_uri(HUB, DEVICE, Some(module));
    edge_client::wire::sas::generate(&sr, key_b64, expiry).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// MQTT options for module `module` as the Python SDK connects (clean session 0, keep-alive 60).
pub fn module_options(
    hub: &TestHub,
    module: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let (host, port) = match &tls {
        Some(_) => ("localhost", hub.tls_addr.port()),
        None => ("127.0.0.1", hub.plain_addr.port()),
    };
    let mut o = MqttOptions::new(format!("{DEVICE}/{module}"), host, port);
    o.set_credentials(
        format!("{HUB}/{DEVICE}/{module}/?api-version=2019-10-01&DeviceClientType=test%2F1.0"),
        token(module, &key_b64(module), now() + 3600),
    );
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(cfg) = tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(cfg)));
    }
    o
}

/// A connected client whose events arrive on a channel.
pub struct TestClient {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// Starts the event loop; it stops at the first connection error (reported on the channel).
    pub fn spawn(options: MqttOptions) -> TestClient {
        let (client, eventloop) = AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx));
        TestClient {
            client,
            events: rx,
            task,
        }
    }

    /// Waits for the CONNACK; `Err` with the connection error text if refused.
    pub async fn connected(&mut self) -> Result<bool, String> {
        loop {
            match self.next_event().await? {
                Event::Incoming(Packet::ConnAck(a)) => return Ok(a.session_present),
                _ => continue,
            }
        }
    }

    pub async fn next_event(&mut self) -> Result<Event, String> {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => Err("event loop ended".into()),
            Err(_) => Err("timed out waiting for an event".into()),
        }
    }

    /// The next incoming PUBLISH (other events skipped).
    pub async fn next_publish(&mut self) -> Result<rumqttc::Publish, String> {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = self.next_event().await? {
                return Ok(p);
            }
        }
    }

    /// Waits for the SUBACK and returns its codes.
    pub async fn suback(&mut self) -> Result<Vec<rumqttc::SubscribeReasonCode>, String> {
        loop {
            if let Event::Incoming(Packet::SubAck(s)) = self.next_event().await? {
                return Ok(s.return_codes);
            }
        }
    }

    /// Waits for a PUBACK (any pkid).
    pub async fn puback(&mut self) -> Result<u16, String> {
        loop {
            if let Event::Incoming(Packet::PubAck(a)) = self.next_event().await? {
                return Ok(a.pkid);
            }
        }
    }

    /// Waits until the connection ends with an error; returns the error text.
    pub async fn disconnected(&mut self) -> String {
        loop {
            match self.next_event().await {
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        self.suback().await.unwrap()
    }

    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
    loop {
        match eventloop.poll().await {
            Ok(e) => {
                if tx.send(Ok(e)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

/// Connects module `module` over TLS and waits for the CONNACK.
pub async fn connect(hub: &TestHub, module: &str) -> TestClient {
    let mut c = TestClient::spawn(module_options(hub, module, Some(hub.client_config())));
    c.connected().await.expect("module should connect");
    c
}

/// Decodes a property bag into a map (for assertions).
pub fn bag(s: &str) -> BTreeMap<String, String> {
    let mut m = edge_client::wire::Message::default();
    edge_client::wire::decode_property_bag(s, &mut m).unwrap();
    let mut all = m.system_properties();
    all.extend(m.properties);
    all
}

/// Waits (bounded) until `f` is true.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}
