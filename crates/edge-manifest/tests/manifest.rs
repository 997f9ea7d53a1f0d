//! Black-box tests: the repository's deployment template, genconfig output, every kind of validation
//! error, real manifests from Microsoft's tools and docs, and Microsoft's JSON schemas.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_manifest::{
    expand_template, genconfig, load_dotenv, merge_env, module_folder_for_image, Manifest,
    ManifestError, ModuleJson, ModuleStatus, RestartPolicy, TemplateContext,
};
use serde_json::{json, Value};

const SEED_QUERY: &str = "SELECT Avg(\"temp\") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn registry_vars() -> BTreeMap<String, String> {
    vars(&[
        ("CONTAINER_REGISTRY_ADDRESS", "MyAcr.azurecr.io"),
        ("CONTAINER_REGISTRY_USERNAME", "myacr"),
        ("CONTAINER_REGISTRY_PASSWORD", "secret"),
    ])
}

fn template_text() -> String {
    std::fs::read_to_string(repo().join("deployment.template.json")).unwrap()
}

fn template_json() -> Value {
    serde_json::from_str(&template_text()).unwrap()
}

fn expanded(platform: &str) -> Manifest {
    let ctx = TemplateContext::new(platform, repo().join("modules"), registry_vars());
    Manifest::from_json_str(&expand_template(&template_text(), &ctx).unwrap()).unwrap()
}

fn messages(m: &Manifest) -> Vec<String> {
    match m.validate() {
        Ok(()) => Vec::new(),
        Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn assert_has(msgs: &[String], needles: &[&str]) {
    assert!(
        msgs.iter().any(|m| needles.iter().all(|n| m.contains(n))),
        "no message contains all of {needles:?}; got:\n{}",
        msgs.join("\n")
    );
}

fn desired(doc: &mut Value) -> &mut Value {
    &mut doc["modulesContent"]["$edgeAgent"]["properties.desired"]
}

// ---------------------------------------------------------------------------------------------
// The repository's template

#[test]
fn our_template_expands_and_validates() {
    let m = expanded("amd64");
    assert_eq!(m.validate().map_err(|e| format!("{e:?}")), Ok(()));
    assert_eq!(m.schema_template(), Some("4.0.0"));
    assert_eq!(m.schema_versions(), (Some("1.1"), Some("1.2")));

    let names: Vec<&str> = m.modules().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["AggregatorModule", "ESPSimModule", "MqttServerModule"]
    );
    let image = |n: &str| m.module(n).unwrap().image.clone();
    assert_eq!(
        image("ESPSimModule"),
        "myacr.azurecr.io/esp-sim:0.1.0-amd64"
    );
    assert_eq!(
        image("MqttServerModule"),
        "myacr.azurecr.io/mqtt-server:0.1.0-amd64"
    );
    assert_eq!(
        image("AggregatorModule"),
        "myacr.azurecr.io/aggregator:0.1.0-amd64"
    );
    for (_, spec) in m.modules() {
        assert_eq!(spec.status, ModuleStatus::Running);
        assert_eq!(spec.restart_policy, RestartPolicy::Always);
    }
    let order = |n: &str| m.module(n).unwrap().startup_order.unwrap();
    assert!(order("AggregatorModule") < order("ESPSimModule"));
    assert!(order("MqttServerModule") < order("ESPSimModule"));
    let sim = m.module("ESPSimModule").unwrap();
    assert_eq!(sim.env["MQTT_HOST"], "MqttServerModule");
    assert_eq!(sim.env["MQTT_PORT"], "1889");
    let mqtt = m.module("MqttServerModule").unwrap();
    assert_eq!(
        mqtt.create_options,
        json!({"ExposedPorts": {"1889/tcp": {}}, "HostConfig": {"PortBindings": {"1889/tcp": [{"HostPort": "1889"}]}}})
    );
    let hub = m.system_modules().find(|(n, _)| *n == "edgeHub").unwrap().1;
    let bindings = hub.create_options["HostConfig"]["PortBindings"]
        .as_object()
        .unwrap();
    let ports: Vec<&str> = bindings.keys().map(String::as_str).collect();
    assert_eq!(ports, ["443/tcp", "5671/tcp", "8883/tcp"]);
    let cred = &m.runtime().registry_credentials["registry"];
    assert_eq!(
        (
            cred.username.as_str(),
            cred.password.as_str(),
            cred.address.as_str()
        ),
        ("myacr", "secret", "MyAcr.azurecr.io")
    );

    // Routes exactly as the seed has them, `$upstream` untouched by the variable expansion.
    let specs = m.route_specs();
    let text = |n: &str| specs.iter().find(|r| r.name == n).unwrap().text.clone();
    assert_eq!(
        text("mqttserverToAggregator"),
        "FROM /messages/modules/MqttServerModule/outputs/output1 INTO BrokeredEndpoint(\"/modules/AggregatorModule/inputs/temperature\")"
    );
    assert_eq!(
        text("aggregatorToCloud"),
        "FROM /messages/modules/AggregatorModule/* INTO $upstream"
    );
    let routes = m.routes().unwrap();
    assert_eq!(routes.len(), 2);
    let to_agg = routes
        .iter()
        .find(|r| r.name == "mqttserverToAggregator")
        .unwrap();
    assert_eq!(
        to_agg.sink,
        edge_routes::Sink::ModuleInput {
            module: "AggregatorModule".into(),
            input: "temperature".into()
        }
    );
    let to_cloud = routes
        .iter()
        .find(|r| r.name == "aggregatorToCloud")
        .unwrap();
    assert_eq!(to_cloud.sink, edge_routes::Sink::Upstream);
    assert_eq!(m.store_and_forward_ttl_secs(), 7200);

    // The seed's query, byte for byte, is one statement (on a line of its own) among the rules.
    let query = m.module_twin_desired("AggregatorModule").unwrap()["query"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        query.lines().any(|l| l == SEED_QUERY),
        "the seed's query, verbatim, on a line of its own: {query}"
    );
    for output in [
        "INTO PatientAvg",
        "INTO FeverAlert",
        "INTO SustainedFeverAlert",
        "INTO RapidRiseAlert",
        "INTO SilentSensorAlert",
        "INTO SpikeAlert",
    ] {
        assert!(query.contains(output), "{output}: {query}");
    }
    assert!(
        query.contains("TIMESTAMP BY timeCreated OVER deviceId"),
        "each patient on their own timeline: {query}"
    );
    let reference = &m.module_twin_desired("AggregatorModule").unwrap()["referenceData"];
    assert!(reference["patients"]["rows"].as_array().unwrap().len() >= 2);
    // The rules group by deviceId: the MQTT server adds the client id as deviceId for sensors that do
    // not send one (the seed's do not).
    assert_eq!(
        m.module_twin_desired("MqttServerModule"),
        Some(&json!({"output": "output1", "enrichDeviceId": true}))
    );
    // A home with four simulated patients, whose ids the reference data lists.
    assert_eq!(
        m.module_twin_desired("ESPSimModule"),
        Some(
            &json!({"mode": "fleet", "devices": 4, "client_id_prefix": "patient", "interval_ms": 2000})
        )
    );
}

#[test]
fn our_template_unexpanded_is_usable_and_names_its_module_folders() {
    // edge-dev may run the template as it is: it validates, and placeholders name the folders.
    let m = Manifest::load(&repo().join("deployment.template.json")).unwrap();
    assert_eq!(m.validate().map_err(|e| format!("{e:?}")), Ok(()));
    let unset = m.unexpanded_variables();
    assert!(unset.iter().all(ManifestError::is_warning), "{unset:?}");
    let text: Vec<String> = unset.iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 3, "one per registry credential: {text:?}");
    assert_has(&text, &["warning: registryCredentials.registry.username is still `$CONTAINER_REGISTRY_USERNAME`", "set it in .env"]);
    let modules_dir = repo().join("modules");
    let folder = |n: &str| module_folder_for_image(&modules_dir, &m.module(n).unwrap().image);
    assert_eq!(folder("ESPSimModule").as_deref(), Some("esp-sim"));
    assert_eq!(folder("MqttServerModule").as_deref(), Some("mqtt-server"));
    assert_eq!(folder("AggregatorModule").as_deref(), Some("aggregator"));
    assert_eq!(
        module_folder_for_image(&modules_dir, "${MODULES.esp-sim.arm32v7}").as_deref(),
        Some("esp-sim")
    );
    assert_eq!(
        module_folder_for_image(&modules_dir, "${MODULES.Esp-Sim}"),
        None,
        "folder names are case-sensitive"
    );
    assert_eq!(
        module_folder_for_image(&modules_dir, "${MODULES.nope}"),
        None
    );
    // Expanded images map back to their folder, whatever the registry.
    assert_eq!(
        module_folder_for_image(&modules_dir, "myacr.azurecr.io/mqtt-server:0.1.0-arm32v7")
            .as_deref(),
        Some("mqtt-server")
    );
    assert_eq!(
        module_folder_for_image(&modules_dir, "localhost:5000/esp-sim:0.1.0-ci7-arm64v8")
            .as_deref(),
        Some("esp-sim")
    );
    assert_eq!(
        module_folder_for_image(&modules_dir, "localhost:5000/esp-sim:0.2.0-amd64"),
        None,
        "other version"
    );
    assert_eq!(
        module_folder_for_image(&modules_dir, "localhost:5000/esp-sim:0.1.0-riscv64"),
        None,
        "unknown platform"
    );
    assert_eq!(
        module_folder_for_image(&modules_dir, "mcr.microsoft.com/azureiotedge-hub:1.5"),
        None
    );
}

#[test]
fn our_module_json_files_build_each_module_binary_from_the_root_dockerfiles() {
    let modules_dir = repo().join("modules");
    for folder in ["mqtt-server", "aggregator", "esp-sim"] {
        let dir = modules_dir.join(folder);
        let m = ModuleJson::load(&dir, &registry_vars()).unwrap();
        assert_eq!(m.repository, format!("MyAcr.azurecr.io/{folder}"));
        assert_eq!(m.version, "0.1.0");
        assert_eq!(
            m.image_tag("arm32v7", ""),
            format!("myacr.azurecr.io/{folder}:0.1.0-arm32v7")
        );
        assert_eq!(
            m.image_tag("amd64", "ci7"),
            format!("myacr.azurecr.io/{folder}:0.1.0-ci7-amd64")
        );
        let platforms: Vec<&str> = m.platforms.keys().map(String::as_str).collect();
        assert_eq!(platforms, ["amd64", "arm32v7", "arm64v8"]);
        for p in platforms {
            let dockerfile = m.dockerfile(p).unwrap();
            assert_eq!(dockerfile, dir.join(format!("../../Dockerfile.{p}")));
        }
        assert_eq!(m.context_dir(), dir.join("../.."));
        assert_eq!(
            m.docker_build_args(),
            ["--build-arg".to_string(), format!("MODULE={folder}")]
        );
        // The bin built by `--build-arg MODULE=<folder>` exists: the crate's binary is named after the folder.
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            cargo.contains(&format!("name = \"{folder}\"")),
            "{folder}/Cargo.toml names no bin {folder}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// genconfig

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn genconfig_writes_deployments_for_amd64_and_arm32v7() {
    let out = tempfile::tempdir().unwrap();
    // The variables come from a .env file, as `iotedgedev genconfig` takes them.
    let dotenv = out.path().join(".env");
    std::fs::write(
        &dotenv,
        "CONTAINER_REGISTRY_ADDRESS=myacr.azurecr.io\nCONTAINER_REGISTRY_USERNAME=myacr\nCONTAINER_REGISTRY_PASSWORD='p@ss$word'\n",
    )
    .unwrap();
    let env = merge_env(load_dotenv(&dotenv).unwrap(), Vec::new());
    let template = repo().join("deployment.template.json");
    for platform in ["amd64", "arm32v7"] {
        let path = genconfig(&template, platform, &out.path().join("config"), &env).unwrap();
        assert_eq!(
            path,
            out.path()
                .join("config")
                .join(format!("deployment.{platform}.json"))
        );
        let doc = read_json(&path);
        assert!(doc.get("$schema-template").is_none());
        let d = &doc["modulesContent"]["$edgeAgent"]["properties.desired"];
        for (name, folder) in [
            ("ESPSimModule", "esp-sim"),
            ("MqttServerModule", "mqtt-server"),
            ("AggregatorModule", "aggregator"),
        ] {
            assert_eq!(
                d["modules"][name]["settings"]["image"],
                format!("myacr.azurecr.io/{folder}:0.1.0-{platform}")
            );
        }
        assert_eq!(
            d["modules"]["MqttServerModule"]["settings"]["createOptions"],
            r#"{"ExposedPorts":{"1889/tcp":{}},"HostConfig":{"PortBindings":{"1889/tcp":[{"HostPort":"1889"}]}}}"#
        );
        assert_eq!(
            d["modules"]["ESPSimModule"]["settings"]["createOptions"],
            "{}"
        );
        assert_eq!(
            d["systemModules"]["edgeAgent"]["settings"]["createOptions"],
            "{}"
        );
        let hub_opts = d["systemModules"]["edgeHub"]["settings"]["createOptions"]
            .as_str()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(hub_opts).unwrap(),
            json!({"HostConfig": {"PortBindings": {"5671/tcp": [{"HostPort": "5671"}], "8883/tcp": [{"HostPort": "8883"}], "443/tcp": [{"HostPort": "443"}]}}})
        );
        assert_eq!(
            d["runtime"]["settings"]["registryCredentials"]["registry"]["password"],
            "p@ss$word"
        );
        assert_eq!(
            doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["aggregatorToCloud"],
            "FROM /messages/modules/AggregatorModule/* INTO $upstream"
        );
        // The output is a deployment this crate reads back without any problem.
        let back = Manifest::load(&path).unwrap();
        assert_eq!(back.validate().map_err(|e| format!("{e:?}")), Ok(()));
        assert_eq!(
            back.module("ESPSimModule").unwrap().env["MQTT_HOST"],
            "MqttServerModule"
        );
    }
}

#[test]
fn genconfig_honours_container_tag_and_deployment_config_file() {
    let out = tempfile::tempdir().unwrap();
    let mut env = registry_vars();
    env.insert("CONTAINER_TAG".into(), "build42".into());
    env.insert("DEPLOYMENT_CONFIG_FILE".into(), "pi.json".into());
    let path = genconfig(
        &repo().join("deployment.template.json"),
        "arm64v8",
        out.path(),
        &env,
    )
    .unwrap();
    assert_eq!(path, out.path().join("pi.json"));
    let doc = read_json(&path);
    assert_eq!(
        doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["AggregatorModule"]
            ["settings"]["image"],
        "myacr.azurecr.io/aggregator:0.1.0-build42-arm64v8"
    );
}

#[test]
fn genconfig_chunks_long_create_options_at_512_characters() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = template_json();
    let env: Vec<String> = (0..80)
        .map(|i| format!("SETTING_{i:03}=a fairly long value number {i}"))
        .collect();
    desired(&mut doc)["modules"]["AggregatorModule"]["settings"]["createOptions"] =
        json!({"Env": env});
    let template = dir.path().join("deployment.template.json");
    std::fs::write(&template, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let mut env_vars = registry_vars();
    env_vars.insert(
        "MODULES_PATH".into(),
        repo().join("modules").display().to_string(),
    );
    let path = genconfig(&template, "amd64", &dir.path().join("config"), &env_vars).unwrap();
    let out = read_json(&path);
    let settings = out["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
        ["AggregatorModule"]["settings"]
        .as_object()
        .unwrap()
        .clone();
    let mut joined = String::new();
    let mut n = 0;
    for key in std::iter::once("createOptions".to_string())
        .chain((1..8).map(|i| format!("createOptions{i:02}")))
    {
        if let Some(Value::String(s)) = settings.get(&key) {
            assert!(
                s.chars().count() <= 512,
                "{key} has {} characters",
                s.chars().count()
            );
            if settings.contains_key(&format!("createOptions{:02}", n + 1)) {
                assert_eq!(
                    s.chars().count(),
                    512,
                    "{key} is not full but another chunk follows"
                );
            }
            joined.push_str(s);
            n += 1;
        }
    }
    assert!(n >= 5, "expected several chunks, got {n}");
    let back: Value = serde_json::from_str(&joined).unwrap();
    assert_eq!(back["Env"].as_array().unwrap().len(), 80);

    // Too big for 8 chunks: genconfig refuses, and says which module.
    let huge: Vec<String> = (0..400)
        .map(|i| format!("SETTING_{i:03}=a fairly long value number {i}"))
        .collect();
    desired(&mut doc)["modules"]["AggregatorModule"]["settings"]["createOptions"] =
        json!({"Env": huge});
    std::fs::write(&template, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let err = genconfig(&template, "amd64", &dir.path().join("config2"), &env_vars).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("AggregatorModule") && text.contains("at most 4096"),
        "{text}"
    );
    assert!(!dir.path().join("config2/deployment.amd64.json").exists());
}

// ---------------------------------------------------------------------------------------------
// Validation messages, one kind at a time

fn problems_of(doc: Value) -> Vec<String> {
    messages(&Manifest::from_value(doc).unwrap())
}

#[test]
fn route_naming_a_missing_module_is_reported() {
    let mut doc = template_json();
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["fromGhost"] =
        json!("FROM /messages/modules/GhostModule/outputs/x INTO $upstream");
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["toTypo"] = json!(
        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/aggregatormodule/inputs/temperature\")"
    );
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["selectForm"] =
        json!("SELECT * FROM /messages/modules/Other /* no such module */ WHERE $connectionModuleId = 'x' INTO $upstream");
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["allModules"] =
        json!("FROM /messages/modules/* INTO $upstream");
    let msgs = problems_of(doc);
    assert_has(&msgs, &["route `selectForm`", "reads from module `Other`"]);
    assert!(!msgs.iter().any(|m| m.contains("allModules")), "{msgs:?}");
    assert_has(
        &msgs,
        &[
            "route `fromGhost`",
            "reads from module `GhostModule`",
            "not in the manifest",
        ],
    );
    assert_has(
        &msgs,
        &[
            "route `toTypo`",
            "sends to module `aggregatormodule`",
            "did you mean `AggregatorModule`?",
        ],
    );
}

#[test]
fn route_that_does_not_parse_is_reported_with_the_grammar_error() {
    let mut doc = template_json();
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["broken"] =
        json!("FROM /messages/* WHERE INTO $upstream");
    let msgs = problems_of(doc);
    let expected = edge_routes::Route::parse("broken", "FROM /messages/* WHERE INTO $upstream")
        .unwrap_err()
        .to_string();
    assert_has(&msgs, &["route `broken` does not parse", &expected]);
    let m = Manifest::from_json_str(&template_text()).unwrap();
    assert!(m.routes().is_ok());
}

#[test]
fn create_options_that_are_not_json_are_reported_with_module_and_json_error() {
    let mut doc = template_json();
    desired(&mut doc)["modules"]["MqttServerModule"]["settings"]["createOptions"] =
        json!("{\"HostConfig\": {\"PortBindings\": }");
    desired(&mut doc)["modules"]["ESPSimModule"]["settings"]["createOptions"] = json!("[1, 2]");
    let msgs = problems_of(doc);
    assert_has(
        &msgs,
        &[
            "module `MqttServerModule`",
            "createOptions is not valid JSON",
            "expected value at line 1 column",
        ],
    );
    assert_has(&msgs, &["module `ESPSimModule`", "an array, not an object"]);
}

#[test]
fn unknown_status_restart_policy_and_missing_image_are_reported() {
    let mut doc = template_json();
    let modules = &mut desired(&mut doc)["modules"];
    modules["ESPSimModule"]["status"] = json!("paused");
    modules["MqttServerModule"]["restartPolicy"] = json!("on-crash");
    modules["AggregatorModule"]["settings"]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let msgs = problems_of(doc);
    assert_has(
        &msgs,
        &[
            "module `ESPSimModule`",
            "status `paused`",
            "`running`, `stopped`",
        ],
    );
    assert_has(
        &msgs,
        &[
            "module `MqttServerModule`",
            "restartPolicy `on-crash`",
            "`on-unhealthy`",
        ],
    );
    assert_has(&msgs, &["module `AggregatorModule` has no settings.image"]);
}

#[test]
fn latest_tags_are_warnings() {
    let mut doc = template_json();
    desired(&mut doc)["modules"]["ESPSimModule"]["settings"]["image"] =
        json!("myacr.azurecr.io/esp-sim:latest");
    desired(&mut doc)["modules"]["MqttServerModule"]["settings"]["image"] =
        json!("localhost:5000/mqtt-server");
    desired(&mut doc)["runtime"]["settings"]["registryCredentials"] = json!({});
    let problems = Manifest::from_value(doc).unwrap().validate().unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().all(ManifestError::is_warning));
    let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_has(
        &msgs,
        &[
            "warning",
            "ESPSimModule",
            "`myacr.azurecr.io/esp-sim:latest`",
            "pin a version",
        ],
    );
    assert_has(
        &msgs,
        &[
            "warning",
            "MqttServerModule",
            "`localhost:5000/mqtt-server`",
        ],
    );
}

#[test]
fn module_names_differing_only_in_case_are_reported() {
    let mut doc = template_json();
    let copy = desired(&mut doc)["modules"]["ESPSimModule"].clone();
    desired(&mut doc)["modules"]["EspSimModule"] = copy;
    let msgs = problems_of(doc);
    assert_has(
        &msgs,
        &["`ESPSimModule`", "`EspSimModule`", "differ only in case"],
    );
}

#[test]
fn route_priority_out_of_range_is_reported() {
    let mut doc = template_json();
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["aggregatorToCloud"] = json!({
        "route": "FROM /messages/modules/AggregatorModule/* INTO $upstream", "priority": 10, "timeToLiveSecs": 60
    });
    let msgs = problems_of(doc.clone());
    assert_has(
        &msgs,
        &[
            "route `aggregatorToCloud`",
            "priority 10",
            "0 (highest) to 9 (lowest)",
        ],
    );
    // In range, the object form's priority and time-to-live reach the parsed route.
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["aggregatorToCloud"]
        ["priority"] = json!(9);
    let m = Manifest::from_value(doc).unwrap();
    let route = m
        .routes()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "aggregatorToCloud")
        .unwrap();
    assert_eq!((route.priority, route.time_to_live_secs), (9, Some(60)));
}

#[test]
fn twins_of_missing_modules_and_bad_names_are_reported() {
    let mut doc = template_json();
    doc["modulesContent"]["aggregatorModule"] =
        json!({"properties.desired": {"query": "SELECT 1"}});
    let copy = desired(&mut doc)["modules"]["ESPSimModule"].clone();
    desired(&mut doc)["modules"]["Bad.Name"] = copy;
    let msgs = problems_of(doc);
    assert_has(
        &msgs,
        &[
            "twin for `aggregatorModule`",
            "did you mean `AggregatorModule`?",
        ],
    );
    assert_has(&msgs, &["module name `Bad.Name`"]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut doc = template_json();
    desired(&mut doc)["modules"]["ESPSimModule"]["status"] = json!("paused");
    desired(&mut doc)["modules"]["MqttServerModule"]["settings"]["createOptions"] = json!("{");
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["x"] =
        json!("FROM /messages/modules/Nope INTO $upstream");
    let problems = Manifest::from_value(doc).unwrap().validate().unwrap_err();
    let errors = problems.iter().filter(|p| !p.is_warning()).count();
    assert_eq!(errors, 3, "{problems:#?}");
}

#[test]
fn placeholders_that_cannot_be_expanded_fail_with_the_reason() {
    let mut doc = template_json();
    desired(&mut doc)["modules"]["ESPSimModule"]["settings"]["image"] = json!("${MODULES.ESP-SIM}");
    let ctx = TemplateContext::new("amd64", repo().join("modules"), registry_vars());
    let err = expand_template(&doc.to_string(), &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`${MODULES.ESP-SIM}`") && err.contains("case-sensitive"),
        "{err}"
    );

    let ctx = TemplateContext::new("riscv64", repo().join("modules"), registry_vars());
    let err = expand_template(&template_text(), &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no Dockerfile for platform `riscv64`")
            && err.contains("amd64, arm32v7, arm64v8"),
        "{err}"
    );
}

#[test]
fn variable_expansion_leaves_unknown_dollar_names_and_rewrites_known_ones_like_iotedgedev() {
    let ctx = TemplateContext::new("amd64", repo().join("modules"), BTreeMap::new());
    let text = expand_template(&template_text(), &ctx).unwrap();
    let m = Manifest::from_json_str(&text).unwrap();
    assert!(m
        .route_specs()
        .iter()
        .any(|r| r.text.ends_with("INTO $upstream")));
    let cred = &m.runtime().registry_credentials["registry"];
    assert_eq!(
        cred.username, "$CONTAINER_REGISTRY_USERNAME",
        "unset variables stay as written"
    );
    // Unset, the registry stays a variable in the image too (lowercased, as iotedgedev does): the
    // manifest is valid, and `unexpanded_variables` warns about each such value.
    assert_eq!(
        m.module("ESPSimModule").unwrap().image,
        "$container_registry_address/esp-sim:0.1.0-amd64"
    );
    assert_eq!(m.validate().map_err(|e| format!("{e:?}")), Ok(()));
    let unset: Vec<String> = m
        .unexpanded_variables()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(unset.len(), 6, "{unset:?}");
    assert_has(
        &unset,
        &[
            "the image of module `ESPSimModule`",
            "`$container_registry_address/esp-sim:0.1.0-amd64`",
        ],
    );
    // The module is still found for a local run.
    assert_eq!(
        module_folder_for_image(
            &repo().join("modules"),
            &m.module("ESPSimModule").unwrap().image
        )
        .as_deref(),
        Some("esp-sim")
    );

    // os.path.expandvars rewrites `$upstream` when a variable of that name exists; so do we.
    let mut v = registry_vars();
    v.insert("upstream".into(), "oops".into());
    let ctx = TemplateContext::new("amd64", repo().join("modules"), v);
    let text = expand_template(&template_text(), &ctx).unwrap();
    assert!(text.contains("INTO oops") && !text.contains("$upstream"));
}

// ---------------------------------------------------------------------------------------------
// Real manifests

#[test]
fn iotedgedev_generated_deployment_parses() {
    let m = Manifest::load(&fixtures().join("iotedgedev-deployment.amd64.json")).unwrap();
    assert_eq!(m.modules().count(), 2);
    assert_eq!(m.routes().unwrap().len(), 2);
    let hub = m.system_modules().find(|(n, _)| *n == "edgeHub").unwrap().1;
    assert!(hub.create_options["HostConfig"]["PortBindings"]["5671/tcp"].is_array());
    // Its image kept an unset `${CONTAINER_REGISTRY_SERVER}` (lowercased): valid, with one warning.
    // valid; its runtime images are of releases whose support has ended, which is a warning
    assert_only_runtime_warnings(&m);
    let unset = m.unexpanded_variables();
    assert_eq!(unset.len(), 1, "{unset:?}");
    assert!(
        unset[0].is_warning()
            && unset[0]
                .to_string()
                .contains("${container_registry_server}")
    );
    // Converting it again changes nothing.
    assert_eq!(
        m.to_deployment_json(),
        read_json(&fixtures().join("iotedgedev-deployment.amd64.json"))
    );
}

#[test]
fn chunked_create_options_from_the_iotedge_design_note_are_joined_in_order() {
    let m = Manifest::load(&fixtures().join("iotedge-chunked-createoptions.json")).unwrap();
    // valid; its runtime images are of releases whose support has ended, which is a warning
    assert_only_runtime_warnings(&m);
    let hub = m.system_modules().find(|(n, _)| *n == "edgeHub").unwrap().1;
    assert_eq!(
        hub.create_options,
        json!({"HostConfig": {"PortBindings": {"8883/tcp": [{"HostPort": "8883"}], "443/tcp": [{"HostPort": "443"}], "5671/tcp": [{"HostPort": "5671"}]}}})
    );
    let agent = m
        .system_modules()
        .find(|(n, _)| *n == "edgeAgent")
        .unwrap()
        .1;
    assert_eq!(agent.env["RuntimeLogLevel"], "Debug");
    // Re-chunked at 512 characters, the short options fit in one value again.
    let out = m.to_deployment_json();
    let settings = &out["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]
        ["edgeHub"]["settings"];
    assert!(settings.get("createOptions01").is_none());
    let text = settings["createOptions"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        hub.create_options
    );

    // The design note's invalid example: a gap in the numbering.
    let mut doc = read_json(&fixtures().join("iotedge-chunked-createoptions.json"));
    let s = &mut doc["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]
        ["edgeHub"]["settings"];
    let four = s["createOptions04"].clone();
    s["createOptions05"] = four;
    s.as_object_mut().unwrap().remove("createOptions02");
    let msgs = problems_of(doc);
    assert_has(
        &msgs,
        &[
            "module `edgeHub`",
            "createOptions03 follows a gap: createOptions02 is missing",
        ],
    );
}

#[test]
fn docs_manifest_with_route_priorities_parses() {
    let m = Manifest::load(&fixtures().join("docs-module-composition.json")).unwrap();
    // valid; its runtime images are of releases whose support has ended, which is a warning
    assert_only_runtime_warnings(&m);
    let routes = m.routes().unwrap();
    let r = routes.iter().find(|r| r.name == "filterToIoTHub").unwrap();
    assert_eq!((r.priority, r.time_to_live_secs), (1, Some(1800)));
    assert_eq!(m.store_and_forward_ttl_secs(), 100);
    assert_eq!(m.module("filtermodule").unwrap().env["tempLimit"], "100");
    assert_eq!(m.module("filtermodule").unwrap().startup_order, Some(1));
    assert_eq!(
        m.module_twin_desired("filtermodule").unwrap()["TemperatureThreshold"],
        25
    );
    assert_eq!(
        m.runtime().registry_credentials["ContosoRegistry"].address,
        "myacr.azurecr.io"
    );
}

#[test]
fn iotedgedev_solution_template_expands_as_iotedgedev_does() {
    let solution = fixtures().join("iotedgedev-solution");
    let out = tempfile::tempdir().unwrap();
    let env = vars(&[
        ("CONTAINER_REGISTRY_SERVER", "LocalHost:5000"),
        ("USERNAME", "u"),
        ("PASSWORD", "p"),
    ]);
    let path = genconfig(
        &solution.join("deployment.template.json"),
        "amd64",
        out.path(),
        &env,
    )
    .unwrap();
    assert_eq!(path.file_name().unwrap(), "deployment.amd64.json");
    let doc = read_json(&path);
    let modules = &doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"];
    assert_eq!(
        modules["sample_module"]["settings"]["image"],
        "localhost:5000/sample_module:0.0.1-RC-amd64"
    );
    assert_eq!(
        modules["sample_module_2"]["settings"]["image"],
        "localhost:5000/sample_module_2:0.0.1-RC-amd64"
    );
    assert_eq!(
        modules["tempSensor"]["settings"]["image"],
        "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.0"
    );
    assert_eq!(modules["tempSensor"]["settings"]["createOptions"], "{}");
    let m = ModuleJson::load(&solution.join("modules/sample_module"), &env).unwrap();
    assert_eq!(
        m.context_dir(),
        solution.join("modules/sample_module/../../")
    );
    assert_eq!(
        m.dockerfile("amd64.debug").unwrap(),
        solution.join("modules/sample_module/./Dockerfile.amd64.debug")
    );
    // Its modules have no arm32v7 Dockerfile.
    let err = genconfig(
        &solution.join("deployment.template.json"),
        "arm32v7",
        out.path(),
        &env,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no Dockerfile for platform `arm32v7`"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Microsoft's JSON schemas (python3 + PyPI jsonschema; skipped with a reason when missing)

fn schema_check(kind: &str, files: &[&Path]) -> Option<(bool, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema/validate.py");
    let probe = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(_) => {
            eprintln!("SKIPPED schema validation: python3 has no `jsonschema` (pip install jsonschema; scripts/install-test-deps.sh does)");
            return None;
        }
        Err(e) => {
            eprintln!("SKIPPED schema validation: cannot run python3 ({e})");
            return None;
        }
    }
    let out = Command::new("python3")
        .arg(&script)
        .arg(kind)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn microsoft_schemas_accept_our_template_and_genconfig_output() {
    let template = repo().join("deployment.template.json");
    let Some((ok, text)) = schema_check("template", &[&template]) else {
        return;
    };
    assert!(ok, "{text}");

    let out = tempfile::tempdir().unwrap();
    let mut generated = Vec::new();
    for platform in ["amd64", "arm32v7", "arm64v8"] {
        generated.push(genconfig(&template, platform, out.path(), &registry_vars()).unwrap());
    }
    let fixtures: Vec<PathBuf> = [
        "iotedgedev-deployment.amd64.json",
        "iotedge-chunked-createoptions.json",
        "docs-module-composition.json",
    ]
    .iter()
    .map(|f| fixtures().join(f))
    .collect();
    let files: Vec<&Path> = generated
        .iter()
        .chain(fixtures.iter())
        .map(PathBuf::as_path)
        .collect();
    let (ok, text) = schema_check("deployment", &files).unwrap();
    assert!(ok, "{text}");

    // The check can fail: a bad status and the template's `$schema-template` in a deployment are caught.
    let mut bad = read_json(&generated[0]);
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["ESPSimModule"]
        ["status"] = json!("runing");
    bad["$schema-template"] = json!("4.0.0");
    let bad_path = out.path().join("bad.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let (ok, text) = schema_check("deployment", &[&bad_path]).unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("'runing' is not one of"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// iotedgedev itself as a referee (optional: set EDGE_MANIFEST_IOTEDGEDEV to its executable, e.g. from
// `python3 -m venv v && v/bin/pip install iotedgedev==3.3.9`)

/// createOptions chunks joined and parsed, so that two deployments compare by meaning.
fn normalized(mut doc: Value) -> Value {
    for group in ["systemModules", "modules"] {
        let Some(modules) =
            doc["modulesContent"]["$edgeAgent"]["properties.desired"][group].as_object_mut()
        else {
            continue;
        };
        for module in modules.values_mut() {
            let settings = module["settings"].as_object_mut().unwrap();
            let mut keys: Vec<String> = settings
                .keys()
                .filter(|k| k.starts_with("createOptions"))
                .cloned()
                .collect();
            keys.sort();
            let joined: String = keys
                .iter()
                .map(|k| settings.remove(k).unwrap().as_str().unwrap().to_owned())
                .collect();
            settings.insert(
                "createOptions".into(),
                serde_json::from_str(&joined).unwrap(),
            );
        }
    }
    doc
}

/// Runs `iotedgedev solution genconfig` and ours on a solution folder; both outputs must be the same bytes.
fn compare_with_iotedgedev(
    iotedgedev: &std::ffi::OsStr,
    solution: &Path,
    home: &Path,
    platform: &str,
    env: &BTreeMap<String, String>,
) {
    // A clean environment: expandvars would rewrite `$upstream` if a variable `upstream` existed.
    let run = Command::new(iotedgedev)
        .args([
            "solution",
            "genconfig",
            "-f",
            "deployment.template.json",
            "-P",
            platform,
            "--fail-on-validation-error",
        ])
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .envs(env)
        .current_dir(solution)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let theirs_path = solution
        .join("config")
        .join(format!("deployment.{platform}.json"));
    let ours_path = genconfig(
        &solution.join("deployment.template.json"),
        platform,
        &solution.join("ours"),
        env,
    )
    .unwrap();
    assert_eq!(
        normalized(read_json(&ours_path)),
        normalized(read_json(&theirs_path)),
        "{} {platform}",
        solution.display()
    );
    // Same key order, same formatting: the very same bytes.
    assert_eq!(
        std::fs::read_to_string(&ours_path).unwrap(),
        std::fs::read_to_string(&theirs_path).unwrap(),
        "{} {platform}",
        solution.display()
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() == "module.json"
            || entry.file_name() == "deployment.template.json"
        {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn genconfig_output_is_byte_for_byte_iotedgedevs_when_it_is_available() {
    let Some(iotedgedev) = std::env::var_os("EDGE_MANIFEST_IOTEDGEDEV") else {
        eprintln!("SKIPPED: set EDGE_MANIFEST_IOTEDGEDEV to an iotedgedev 3.3 executable to compare with it");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // iotedgedev starts telemetry uploaders unless its settings say no; it runs offline then.
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join(".iotedgedev")).unwrap();
    std::fs::write(
        home.join(".iotedgedev/setting.ini"),
        "[DEFAULT]\nfirsttime = no\ncollect_telemetry = no\n",
    )
    .unwrap();

    // Our solution.
    let ours = work.path().join("ours");
    copy_tree(&repo().join("modules"), &ours.join("modules"));
    std::fs::copy(
        repo().join("deployment.template.json"),
        ours.join("deployment.template.json"),
    )
    .unwrap();
    for platform in ["amd64", "arm32v7"] {
        compare_with_iotedgedev(&iotedgedev, &ours, &home, platform, &registry_vars());
    }

    // createOptions long enough for several chunks, with non-ASCII text.
    let long = work.path().join("long");
    copy_tree(&ours, &long);
    let mut doc = template_json();
    let env: Vec<String> = (0..80)
        .map(|i| format!("SETTING_{i:03}=valeur numéro {i}"))
        .collect();
    desired(&mut doc)["modules"]["AggregatorModule"]["settings"]["createOptions"] =
        json!({"Env": env, "Labels": {"z": "1", "a": "2"}});
    std::fs::write(
        long.join("deployment.template.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    compare_with_iotedgedev(&iotedgedev, &long, &home, "arm64v8", &registry_vars());

    // iotedgedev's own test solution: `${MODULEDIR<..>}`, schema 1.0, a version with capitals.
    let theirs = work.path().join("theirs");
    copy_tree(&fixtures().join("iotedgedev-solution"), &theirs);
    let env = vars(&[
        ("CONTAINER_REGISTRY_SERVER", "LocalHost:5000"),
        ("USERNAME", "u"),
        ("PASSWORD", "p"),
    ]);
    compare_with_iotedgedev(&iotedgedev, &theirs, &home, "amd64", &env);
}

// ---------------------------------------------------------------------------------------------
// python-dotenv as a referee for `.env` reading (optional: EDGE_MANIFEST_DOTENV_PYTHON names a python
// that has python-dotenv, e.g. the venv iotedgedev is installed in)

#[test]
fn dotenv_reads_what_python_dotenv_reads_when_it_is_available() {
    let Some(python) = std::env::var_os("EDGE_MANIFEST_DOTENV_PYTHON") else {
        eprintln!("SKIPPED: set EDGE_MANIFEST_DOTENV_PYTHON to a python with python-dotenv to compare with it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(
        &path,
        "# comment\n\nA=1\nexport B = two words \nC='lit ${A} \\' x'\nD=\"x\\ny ${A} \\t\\q\"\nE=val # comment\nF=a#b\n\
         G=${FROM_ENV}-${A}-${NOPE:-dflt}-$A-${A:x}\nH=\nI=\"multi\nline\"\n'K'=quoted key\nL= # only a comment\n\
         M=${FROM_ENV:-unused}\nN=\"é ${B}\"\nO=a  b   c\nJ=last",
    )
    .unwrap();
    let script = "import json, os, sys\nfrom dotenv import load_dotenv\nbefore = dict(os.environ)\nload_dotenv(sys.argv[1])\n\
                  print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .env_clear()
        .env("FROM_ENV", "env")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    let ours = edge_manifest::dotenv::parse_dotenv(&std::fs::read_to_string(&path).unwrap(), |n| {
        (n == "FROM_ENV").then(|| "env".to_string())
    })
    .unwrap();
    assert_eq!(ours, theirs);
}

// ---------------------------------------------------------------------------------------------
// `$VAR` expansion against Python's own os.path.expandvars (skipped without python3)

#[test]
fn expand_vars_matches_python_expandvars_on_random_text() {
    let alphabet: Vec<char> = "$${}}AB_a1.-é \"\\\n/".chars().collect();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut corpus: Vec<String> = (0..400)
        .map(|_| {
            let len = (next() % 24) as usize;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        })
        .collect();
    corpus.extend(
        [
            "FROM /messages/modules/A/* INTO $upstream",
            "$schema-template ${MODULES.esp-sim} ${MODULES.esp-sim.arm32v7} $body.temp",
            "$A$B ${A}${B} ${ $A } $$A $1 ${} $",
        ]
        .map(String::from),
    );
    let env = vars(&[
        ("A", "x"),
        ("B", "${A}"),
        ("AB", "ab"),
        ("a1", "$"),
        ("A_", "{}"),
        ("upstream", "UP"),
    ]);
    let script = "import json, os, sys\nprint(json.dumps([os.path.expandvars(s) for s in json.load(sys.stdin)]))";
    let child = Command::new("python3")
        .args(["-c", script])
        .env_clear()
        .envs(&env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: python3 is not available");
        return;
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&corpus).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    for (input, expected) in corpus.iter().zip(&theirs) {
        assert_eq!(
            &edge_manifest::expand_vars(input, &env),
            expected,
            "input {input:?}"
        );
    }
}

#[test]
fn create_options_strings_are_what_python_json_dumps_writes() {
    // Numbers and text where serde_json and Python write differently: big integers, exponents, `-0`,
    // non-ASCII and control characters, a repeated key.
    let options = r#"{"b": [1e16, 1.5e-5, -0, 12345678901234567890123, 0.30000000000000004, 2.50, -19678474362.323402],
                      "ä": "ß😀\u0001\/", "a": {"z": 1, "y": 2, "z": 3}}"#;
    let text = template_text().replacen(
        "\"createOptions\": {}\n            }\n          },\n          \"MqttServerModule\"",
        &format!("\"createOptions\": {options}\n            }}\n          }},\n          \"MqttServerModule\""),
        1,
    );
    assert_ne!(
        text,
        template_text(),
        "the AggregatorModule createOptions were not found"
    );
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("deployment.template.json");
    std::fs::write(&template, &text).unwrap();
    let mut env = registry_vars();
    env.insert(
        "MODULES_PATH".into(),
        repo().join("modules").display().to_string(),
    );
    let path = genconfig(&template, "amd64", dir.path(), &env).unwrap();
    let doc = read_json(&path);
    let ours = doc["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
        ["AggregatorModule"]["settings"]["createOptions"]
        .as_str()
        .unwrap()
        .to_owned();
    let script = "import json, sys\nprint(json.dumps(json.loads(sys.stdin.read()), separators=(',', ':')), end='')";
    let child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED: python3 is not available");
        return;
    };
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(options.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(ours, String::from_utf8(out.stdout).unwrap());
}

/// `validate` finds nothing but the warning that the runtime images are out of support.
fn assert_only_runtime_warnings(m: &Manifest) {
    if let Err(problems) = m.validate() {
        for p in &problems {
            assert!(
                matches!(p, edge_manifest::ManifestError::UnsupportedRuntime { .. })
                    && p.is_warning(),
                "{p}"
            );
        }
    }
}

#[test]
fn schema_versions_iot_edge_1_6_does_not_read_are_errors_and_old_runtimes_warnings() {
    let mut doc = read_json(&fixtures().join("docs-module-composition.json"));
    doc["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = json!("1.3");
    doc["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = json!("2.0");
    let msgs = problems_of(doc);
    assert_has(&msgs, &["$edgeHub schemaVersion \"1.3\"", "1.0, 1.1, 1.2"]);
    assert_has(&msgs, &["$edgeAgent schemaVersion \"2.0\"", "1.0, 1.1"]);
    assert_has(
        &msgs,
        &[
            "warning: edgeAgent uses `mcr.microsoft.com/azureiotedge-agent:1.5`",
            ":1.6",
        ],
    );
}

#[test]
fn the_template_uses_the_iot_edge_1_6_runtime() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deployment.template.json"),
    )
    .unwrap();
    assert!(text.contains("mcr.microsoft.com/azureiotedge-agent:1.6"));
    assert!(text.contains("mcr.microsoft.com/azureiotedge-hub:1.6"));
}
