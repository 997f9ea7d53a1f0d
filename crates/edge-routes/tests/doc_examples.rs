//! The route examples of Microsoft's documentation (IoT Edge "module-composition", the
//! transparent-gateway page, and IoT Hub's "iot-hub-devguide-routing-query-syntax"), plus
//! the seed's two routes, parsed and evaluated against messages as edgeHub would.

use std::collections::BTreeMap;

use edge_routes::{MessageSource, Route, RouteMessage, RouteTable, Sink, Source, DEFAULT_PRIORITY};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Msg {
    source: (Option<&'static str>, &'static str),
    sys: BTreeMap<String, String>,
    props: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Msg {
    fn module(module: &'static str, output: &'static str) -> Msg {
        Msg {
            source: (Some(module), output),
            sys: map(&[("$.cdid", "edge1"), ("$.cmid", module), ("$.on", output)]),
            props: BTreeMap::new(),
            body: Vec::new(),
        }
    }

    fn device(device: &str) -> Msg {
        Msg {
            source: (None, ""),
            sys: map(&[("$.cdid", device)]),
            props: BTreeMap::new(),
            body: Vec::new(),
        }
    }

    fn json(mut self, body: &str) -> Msg {
        self.sys.insert("$.ct".into(), "application/json".into());
        self.sys.insert("$.ce".into(), "utf-8".into());
        self.body = body.as_bytes().to_vec();
        self
    }

    fn prop(mut self, k: &str, v: &str) -> Msg {
        self.props.insert(k.into(), v.into());
        self
    }

    fn sys(mut self, k: &str, v: &str) -> Msg {
        self.sys.insert(k.into(), v.into());
        self
    }

    fn view(&self) -> RouteMessage<'_> {
        RouteMessage {
            source: match self.source {
                (Some(module), output) => MessageSource::Module { module, output },
                (None, _) => MessageSource::Device,
            },
            system_properties: &self.sys,
            properties: &self.props,
            body: &self.body,
        }
    }
}

fn route(name: &str, text: &str) -> Route {
    match Route::parse(name, text) {
        Ok(r) => r,
        Err(e) => panic!("{text:?} should parse: {e}"),
    }
}

fn names<'a>(routes: &[&'a Route]) -> Vec<&'a str> {
    routes.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn seed_routes() {
    let table = RouteTable::parse([
        (
            "mqttserverToAggregator",
            "FROM /messages/modules/MqttServerModule/outputs/output1 INTO BrokeredEndpoint(\"/modules/AggregatorModule/inputs/temperature\")",
        ),
        (
            "aggregatorToCloud",
            "FROM /messages/modules/AggregatorModule/* INTO $upstream",
        ),
    ])
    .expect("the seed's routes parse");
    let r = table.routes();
    assert_eq!(
        r[0].source,
        Source::ModuleOutput {
            module: "MqttServerModule".into(),
            output: "output1".into()
        }
    );
    assert_eq!(
        r[0].sink,
        Sink::ModuleInput {
            module: "AggregatorModule".into(),
            input: "temperature".into()
        }
    );
    assert_eq!(
        r[1].source,
        Source::Module {
            module: "AggregatorModule".into()
        }
    );
    assert_eq!(r[1].sink, Sink::Upstream);
    assert!(r
        .iter()
        .all(|r| r.condition.is_none() && r.priority == DEFAULT_PRIORITY));

    let reading = Msg::module("MqttServerModule", "output1")
        .json(r#"{"temp":38,"timecreated":"11/24/2026 8:13:15 AM"}"#);
    assert_eq!(
        names(&table.evaluate(&reading.view())),
        ["mqttserverToAggregator"]
    );
    let other_output = Msg::module("MqttServerModule", "output2");
    assert!(table.evaluate(&other_output.view()).is_empty());
    for output in ["AvgTemp", "FeverAlert"] {
        let avg = Msg::module("AggregatorModule", output).json(r#"{"avg":37.2}"#);
        assert_eq!(names(&table.evaluate(&avg.view())), ["aggregatorToCloud"]);
    }
    assert!(table.evaluate(&Msg::device("esp1").view()).is_empty());
}

#[test]
fn module_composition_deployment_example() {
    // schema 1.1 example: routes as objects with priority and time to live
    let sensor_to_filter = route(
        "sensorToFilter",
        "FROM /messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput INTO BrokeredEndpoint(\"/modules/filtermodule/inputs/input1\")",
    )
    .with_options(Some(0), Some(1800))
    .expect("priority 0 is valid");
    let filter_to_hub = route(
        "filterToIoTHub",
        "FROM /messages/modules/filtermodule/outputs/output1 INTO $upstream",
    )
    .with_options(Some(1), Some(1800))
    .expect("priority 1 is valid");
    assert_eq!(sensor_to_filter.priority, 0);
    assert_eq!(filter_to_hub.time_to_live_secs, Some(1800));
    let table = RouteTable::new(vec![sensor_to_filter, filter_to_hub]).expect("distinct names");

    let temp = Msg::module("SimulatedTemperatureSensor", "temperatureOutput");
    let hits = table.evaluate(&temp.view());
    assert_eq!(names(&hits), ["sensorToFilter"]);
    assert_eq!(
        hits[0].sink,
        Sink::ModuleInput {
            module: "filtermodule".into(),
            input: "input1".into()
        }
    );
    let filtered = Msg::module("filtermodule", "output1");
    assert_eq!(names(&table.evaluate(&filtered.view())), ["filterToIoTHub"]);

    // the generic schema example: "route2": {"route": "...", "priority": 0, "timeToLiveSecs": 86400}
    let r = route("route2", "FROM /messages/* INTO $upstream")
        .with_options(Some(0), Some(86400))
        .expect("valid options");
    assert!(r.matches(&Msg::device("d").view()));
    assert!(route("r", "FROM /messages/* INTO $upstream")
        .with_options(Some(10), None)
        .is_err());
}

#[test]
fn module_composition_source_table() {
    let module_out = Msg::module("ModA", "out1");
    let module_no_output = Msg::module("ModA", "");
    let other_module = Msg::module("ModB", "out1");
    let device = Msg::device("leaf");
    let twin_sys = BTreeMap::new();
    let twin_props = BTreeMap::new();
    let twin = RouteMessage {
        source: MessageSource::TwinChangeNotification {
            module: Some("ModA"),
        },
        system_properties: &twin_sys,
        properties: &twin_props,
        body: b"{}",
    };
    // (source, [module out1, module without output, other module, device, twin change])
    let table: [(&str, [bool; 5]); 7] = [
        ("/*", [true, true, true, true, true]),
        (
            "/twinChangeNotifications",
            [false, false, false, false, true],
        ),
        ("/messages/*", [true, true, true, true, false]),
        ("/messages/modules/*", [true, true, true, false, false]),
        (
            "/messages/modules/ModA/*",
            [true, true, false, false, false],
        ),
        (
            "/messages/modules/ModA/outputs/*",
            [true, false, false, false, false],
        ),
        (
            "/messages/modules/ModA/outputs/out1",
            [true, false, false, false, false],
        ),
    ];
    for (source, expected) in table {
        let r = route("r", &format!("FROM {source} INTO $upstream"));
        let got = [
            r.matches(&module_out.view()),
            r.matches(&module_no_output.view()),
            r.matches(&other_module.view()),
            r.matches(&device.view()),
            r.matches(&twin),
        ];
        assert_eq!(got, expected, "{source}");
    }
}

#[test]
fn module_composition_conditions() {
    let body = r#"{"ambient":{"temperature":54.3421,"humidity":25},"machine":{"status":"running","temperature":62.2214}}"#;
    let running = Msg::module("tempSensor", "temperatureOutput").json(body);
    let stopped = Msg::module("tempSensor", "temperatureOutput").json(
        &body
            .replace("running", "stopped")
            .replace("62.2214", "59.0"),
    );

    let not_running = route(
        "r1",
        "FROM /messages/* WHERE $body.machine.status != \"running\" INTO $upstream",
    );
    assert!(!not_running.matches(&running.view()));
    assert!(not_running.matches(&stopped.view()));

    let hot_machine = route(
        "r2",
        "FROM /messages/* WHERE $body.ambient.temperature <= 60 AND $body.machine.temperature >= 60 INTO $upstream",
    );
    assert!(hot_machine.matches(&running.view()));
    assert!(!hot_machine.matches(&stopped.view()));

    // the same body without a JSON content type cannot be queried: never matches
    let mut plain = Msg::module("tempSensor", "temperatureOutput").json(body);
    plain.sys.remove("$.ct");
    assert!(!hot_machine.matches(&plain.view()));
    assert!(!not_running.matches(&plain.view()));
}

#[test]
fn leaf_device_routes_of_the_gateway_pages() {
    let table = RouteTable::parse([
        (
            "leafToUpstream",
            "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream",
        ),
        (
            "sensorToAIInsightsInput1",
            "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint(\"/modules/ai_insights/inputs/input1\")",
        ),
        (
            "AIInsightsToIoTHub",
            "FROM /messages/modules/ai_insights/outputs/output1 INTO $upstream",
        ),
    ])
    .expect("the documented routes parse");
    let leaf = Msg::device("sensor");
    assert_eq!(
        names(&table.evaluate(&leaf.view())),
        ["leafToUpstream", "sensorToAIInsightsInput1"]
    );
    let insight = Msg::module("ai_insights", "output1");
    assert_eq!(
        names(&table.evaluate(&insight.view())),
        ["AIInsightsToIoTHub"]
    );
}

fn query_doc_message() -> Msg {
    let body = r#"{"Weather":{"Temperature":50,"Time":"2017-03-09T00:00:00.000Z","PrevTemperatures":[20,30,40],"IsEnabled":true,"Location":{"Street":"One Microsoft Way","City":"Redmond","State":"WA"},"HistoricalData":[{"Month":"Feb","Temperature":40},{"Month":"Jan","Temperature":30}]}}"#;
    Msg::device("dev1")
        .json(body)
        .sys("$.ce", "UTF-8")
        .prop("processingPath", "hot")
        .prop("verbose", "true")
        .prop("severity", "3")
        .prop("testDevice", "false")
        .prop("Status", "Active")
}

#[test]
fn routing_query_syntax_examples() {
    let msg = query_doc_message();
    let cold = query_doc_message().prop("processingPath", "cold");
    let cases = [
        ("$contentEncoding = 'UTF-8'", true, true),
        ("processingPath = 'hot'", true, false),
        (
            "$contentEncoding = 'UTF-8' AND processingPath = 'hot'",
            true,
            false,
        ),
        ("$body.Weather.HistoricalData[0].Month = 'Feb'", true, true),
        (
            "$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled",
            true,
            true,
        ),
        ("length($body.Weather.Location.State) = 2", true, true),
        (
            "$body.Weather.Temperature = 50 AND processingPath = 'hot'",
            true,
            false,
        ),
        // application properties are strings: numbers need as_number
        ("as_number(severity) >= 3", true, true),
        ("verbose = 'true'", true, true),
    ];
    for (cond, on_hot, on_cold) in cases {
        let r = route(
            "q",
            &format!("FROM /messages/* WHERE {cond} INTO $upstream"),
        );
        assert_eq!(r.matches(&msg.view()), on_hot, "{cond}");
        assert_eq!(r.matches(&cold.view()), on_cold, "{cond} (cold)");
    }
}

#[test]
fn routing_query_syntax_twin_change_examples() {
    let sys = map(&[("$.ct", "application/json"), ("$.ce", "utf-8")]);
    let props = BTreeMap::new();
    let body = br#"{"properties":{"desired":{"telemetryConfig":{"sendFrequency":12}}}}"#;
    let change = RouteMessage {
        source: MessageSource::TwinChangeNotification {
            module: Some("ModA"),
        },
        system_properties: &sys,
        properties: &props,
        body,
    };
    let bigger = route(
        "t1",
        "FROM /twinChangeNotifications WHERE $body.properties.desired.telemetryConfig.sendFrequency > 10 INTO $upstream",
    );
    assert!(bigger.matches(&change));
    let defined = route(
        "t2",
        "FROM /twinChangeNotifications WHERE is_defined($body.properties.desired.telemetryConfig.sendFrequency) INTO $upstream",
    );
    assert!(defined.matches(&change));
}

#[test]
fn routing_query_syntax_unsupported_examples() {
    // "$body[0] = 'Feb'" is not supported (undefined in IoT Hub; a compile error in edgeHub)
    assert!(Route::parse(
        "b",
        "FROM /messages/* WHERE $body[0] = 'Feb' INTO $upstream"
    )
    .is_err());
    // IoT Edge routes cannot query twins: $twin.x is an unknown system property, never set
    let twin = route(
        "t",
        "FROM /messages/* WHERE $twin.properties.desired.telemetryConfig.sendFrequency = '5m' INTO $upstream",
    );
    assert!(!twin.matches(&query_doc_message().view()));
    // and `$twin.tags.deploymentLocation.floor = 1` compares a string with a number
    assert!(Route::parse(
        "t",
        "FROM /messages/* WHERE $twin.tags.deploymentLocation.floor = 1 INTO $upstream"
    )
    .is_err());
}

#[test]
fn select_form_and_case_insensitive_keywords() {
    let a = route(
        "a",
        "SELECT * FROM /messages/* WHERE processingPath = 'hot' INTO $upstream",
    );
    let b = route(
        "b",
        "select * from /messages/* where processingPath = 'hot' into $UPSTREAM",
    );
    assert_eq!(a.condition, b.condition);
    assert_eq!(a.sink, b.sink);
    let single = route(
        "c",
        "FROM /messages/* INTO brokeredendpoint('/modules/filtermodule/inputs/input1')",
    );
    assert_eq!(
        single.sink,
        Sink::ModuleInput {
            module: "filtermodule".into(),
            input: "input1".into()
        }
    );
    assert!(a.matches(&query_doc_message().view()));
}

#[test]
fn table_dedupes_sinks_keeping_the_best_priority() {
    let low = route("low", "FROM /messages/* INTO $upstream")
        .with_options(Some(5), None)
        .expect("valid");
    let high = route("high", "FROM /messages/modules/* INTO $upstream")
        .with_options(Some(1), None)
        .expect("valid");
    let unset = route("unset", "FROM /* INTO $upstream");
    let to_input = route(
        "toInput",
        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/A/inputs/in\")",
    );
    let table = RouteTable::new(vec![low, high, unset, to_input]).expect("distinct names");
    let m = Msg::module("X", "o");
    assert_eq!(names(&table.evaluate(&m.view())), ["high", "toInput"]);
    // a device message does not match `high`: the best of the rest wins
    assert_eq!(
        names(&table.evaluate(&Msg::device("d").view())),
        ["low", "toInput"]
    );

    let dup = RouteTable::new(vec![
        route("same", "FROM /* INTO $upstream"),
        route("same", "FROM /messages/* INTO $upstream"),
    ]);
    let err = dup.expect_err("duplicate names are rejected");
    assert_eq!(err.name, "same");
    assert!(err.to_string().contains("used twice"), "{err}");
}

#[test]
fn printed_routes_parse_back() {
    for text in [
        "FROM /messages/modules/MqttServerModule/outputs/output1 INTO BrokeredEndpoint(\"/modules/AggregatorModule/inputs/temperature\")",
        "FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream",
        "FROM /messages/* WHERE $body.ambient.temperature <= 60 AND $body.machine.temperature >= 60 INTO $upstream",
        "FROM /twinChangeNotifications WHERE {$connectionModuleId} = 'A' OR - as_number(x) > -1 INTO $upstream",
    ] {
        let r = route("p", text);
        let again = route("p", &r.to_string());
        assert_eq!(r, again, "{text} -> {r}");
    }
}
