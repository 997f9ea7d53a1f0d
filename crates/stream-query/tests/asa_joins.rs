//! JOIN (stream to stream, LEFT OUTER, reference data), CROSS/OUTER APPLY and UNION, with the
//! worked examples of the Azure Stream Analytics documentation ("Common query patterns", "Parse
//! JSON and Avro data", the JOIN and UNION reference) as expected output.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use stream_query::{format_timestamp, Engine, EventPolicy, Query};

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Record (input, event, arrival) in order, flush; rows as (output, row, System.Timestamp()).
fn run_on(e: &mut Engine, events: &[(&str, Value, &str)]) -> Vec<(String, Value, String)> {
    let mut out = Vec::new();
    for (input, ev, arrival) in events {
        out.extend(e.record(input, ev, at(arrival)).unwrap());
    }
    out.extend(e.flush());
    let w = e.take_warnings();
    assert!(w.is_empty(), "{w:?}");
    out.into_iter()
        .map(|r| {
            (
                r.output,
                Value::Object(r.row),
                format_timestamp(r.timestamp),
            )
        })
        .collect()
}

fn run(query: &str, events: &[(&str, Value, &str)]) -> Vec<(String, Value, String)> {
    let mut e = Engine::new(Query::parse(query).unwrap(), EventPolicy::default());
    run_on(&mut e, events)
}

fn rows(out: &[(String, Value, String)]) -> Vec<Value> {
    out.iter().map(|r| r.1.clone()).collect()
}

fn plates() -> Vec<(&'static str, Value, String)> {
    [
        ("DXE 5291", "Make1", "00:00:05"),
        ("YZK 5704", "Make3", "00:02:17"),
        ("RMV 8282", "Make1", "00:05:01"),
        ("YHN 6970", "Make2", "00:06:00"),
        ("VFE 1616", "Make2", "00:09:31"),
        ("QYF 9358", "Make1", "00:12:02"),
        ("MDR 6128", "Make4", "00:13:45"),
    ]
    .iter()
    .map(|(p, m, t)| {
        let t = format!("2015-07-27T{t}.0000000Z");
        (
            "Input",
            json!({"License_plate": p, "Make": m, "Time": t}),
            t,
        )
    })
    .collect()
}

#[test]
fn join_returns_the_last_event_in_a_window() {
    // query patterns, "Return the last event in a window"
    let ev = plates();
    let evs: Vec<(&str, Value, &str)> = ev
        .iter()
        .map(|(i, v, t)| (*i, v.clone(), t.as_str()))
        .collect();
    let out = run(
        "WITH LastInWindow AS (
            SELECT MAX(Time) AS LastEventTime FROM Input TIMESTAMP BY Time
            GROUP BY TumblingWindow(minute, 10))
         SELECT Input.License_plate, Input.Make, Input.Time
         FROM Input TIMESTAMP BY Time
         INNER JOIN LastInWindow
         ON DATEDIFF(minute, Input, LastInWindow) BETWEEN 0 AND 10
         AND Input.Time = LastInWindow.LastEventTime",
        &evs,
    );
    assert_eq!(
        rows(&out),
        vec![
            json!({"License_plate": "VFE 1616", "Make": "Make2", "Time": "2015-07-27T00:09:31.0000000Z"}),
            json!({"License_plate": "MDR 6128", "Make": "Make4", "Time": "2015-07-27T00:13:45.0000000Z"}),
        ]
    );
}

#[test]
fn join_correlates_two_event_types_within_the_same_stream() {
    // query patterns (2019), "Correlate two event types within the same stream". The doc's
    // input table calls the time column `time` while its query reads `t`; the input uses `t`.
    // It compares t1.t (text) with the step's System.Timestamp(): date-times compare as times.
    let mut evs = Vec::new();
    let readings = [
        (1, 120, 15),
        (2, 100, 15),
        (3, 70, 15),
        (4, 50, 15),
        (5, 30, 8),
        (6, 20, 8),
        (7, 20, 8),
        (8, 20, 8),
    ];
    let times: Vec<String> = readings
        .iter()
        .map(|(m, _, _)| format!("2018-01-01T16:0{m}:00Z"))
        .collect();
    for ((_, temp, power), t) in readings.iter().zip(times.iter()) {
        evs.push((
            "input",
            json!({"t": t, "deviceId": "Oven1", "sensorName": "temp", "value": temp}),
            t.as_str(),
        ));
        evs.push((
            "input",
            json!({"t": t, "deviceId": "Oven1", "sensorName": "power", "value": power}),
            t.as_str(),
        ));
    }
    let out = run(
        "WITH max_power_during_last_3_mins AS (
            SELECT System.TimeStamp() AS windowTime, deviceId, max(value) as maxPower
            FROM input TIMESTAMP BY t
            WHERE sensorName = 'power'
            GROUP BY deviceId, SlidingWindow(minute, 3))
         SELECT t1.t AS eventTime, t1.deviceId, t1.value AS temp,
            'Short circuit heating elements' as alertMessage,
            t2.maxPower AS maxPowerDuringLast3mins
         INTO resultsr
         FROM input t1 TIMESTAMP BY t
         JOIN max_power_during_last_3_mins t2
            ON t1.deviceId = t2.deviceId
            AND t1.t = t2.windowTime
            AND DATEDIFF(minute,t1,t2) between 0 and 3
         WHERE t1.sensorName = 'temp' AND t1.value <= 40 AND t2.maxPower > 10",
        &evs,
    );
    let got: Vec<(Value, Value, Value)> = rows(&out)
        .iter()
        .map(|r| {
            (
                r["eventTime"].clone(),
                r["temp"].clone(),
                r["maxPowerDuringLast3mins"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("2018-01-01T16:05:00Z"), json!(30), json!(15)),
            (json!("2018-01-01T16:06:00Z"), json!(20), json!(15)),
        ]
    );
    // The doc's table has a third row at 16:07 with maxPower 15. That needs the 16:04 power
    // reading (15) inside the sliding window that ends at 16:07, but windows are (start, end]
    // (ASA's windowing rule, which the window tests here follow), so (16:04, 16:07] holds only
    // 8s and the row does not pass `maxPower > 10`. We test the rule, not the table.
    assert!(out.iter().all(|r| r.0 == "resultsr"));
    assert_eq!(
        out[0].1["alertMessage"],
        json!("Short circuit heating elements")
    );
}

#[test]
fn left_outer_join_finds_the_absence_of_an_event() {
    // JOIN reference: vehicles that entered a toll booth but did not exit within 15 minutes.
    // The unmatched row carries NULL for the right side and is timestamped at the left event's
    // time plus the bound's upper end (System.Timestamp() reference).
    let evs = [
        (
            "Input1",
            json!({"TollId": 1, "LicensePlate": "A", "EntryTime": "2026-01-01T10:00:00Z"}),
            "2026-01-01T10:00:00Z",
        ),
        (
            "Input1",
            json!({"TollId": 1, "LicensePlate": "B", "EntryTime": "2026-01-01T10:01:00Z"}),
            "2026-01-01T10:01:00Z",
        ),
        (
            "Input2",
            json!({"TollId": 1, "LicensePlate": "A", "ExitTime": "2026-01-01T10:05:00Z"}),
            "2026-01-01T10:05:00Z",
        ),
        // B exits too late (16 minutes): no match within the bound
        (
            "Input2",
            json!({"TollId": 1, "LicensePlate": "B", "ExitTime": "2026-01-01T10:17:00Z"}),
            "2026-01-01T10:17:00Z",
        ),
        (
            "Input1",
            json!({"TollId": 2, "LicensePlate": "C", "EntryTime": "2026-01-01T10:30:00Z"}),
            "2026-01-01T10:30:00Z",
        ),
        (
            "Input2",
            json!({"TollId": 2, "LicensePlate": "C", "ExitTime": "2026-01-01T10:30:00Z"}),
            "2026-01-01T10:30:00Z",
        ),
    ];
    let q = "SELECT I1.TollId, I1.EntryTime, I2.ExitTime, I1.LicensePlate,
            DATEDIFF(minute, I1.EntryTime, I2.ExitTime) AS DurationinMinutes
        FROM Input1 I1 TIMESTAMP BY EntryTime
        LEFT OUTER JOIN Input2 I2 TIMESTAMP BY ExitTime
        ON I1.TollId = I2.TollId AND I1.LicensePlate = I2.LicensePlate
        AND DATEDIFF(minute, I1, I2) BETWEEN 0 AND 15";
    let out = run(&format!("{q} WHERE I2.TollId IS NULL"), &evs);
    assert_eq!(
        out.iter()
            .map(|r| (r.1.clone(), r.2.clone()))
            .collect::<Vec<_>>(),
        vec![(
            json!({"TollId": 1, "EntryTime": "2026-01-01T10:01:00Z", "ExitTime": null, "LicensePlate": "B", "DurationinMinutes": null}),
            "2026-01-01T10:16:00.0000000Z".to_string()
        )]
    );
    // without the WHERE: the matches too, each at the later of the two times
    let out = run(q, &evs);
    let got: Vec<(Value, String)> = out
        .iter()
        .map(|r| (r.1["LicensePlate"].clone(), r.2.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("A"), "2026-01-01T10:05:00.0000000Z".to_string()),
            (json!("B"), "2026-01-01T10:16:00.0000000Z".to_string()),
            (json!("C"), "2026-01-01T10:30:00.0000000Z".to_string()),
        ]
    );
}

#[test]
fn self_join_through_a_step_finds_a_silent_sensor() {
    // the absence pattern on one stream: a reading with no later reading of the same device
    // within 5 minutes
    let mut evs = Vec::new();
    let ts: Vec<String> = (0..8).map(|m| format!("2026-01-01T10:0{m}:00Z")).collect();
    for (m, t) in ts.iter().enumerate() {
        evs.push(("temperature", json!({"deviceId": "p1", "t": t}), t.as_str()));
        if m < 2 {
            evs.push(("temperature", json!({"deviceId": "p2", "t": t}), t.as_str()));
        }
    }
    let out = run(
        "WITH r AS (SELECT deviceId, t FROM temperature TIMESTAMP BY t)
         SELECT a.deviceId, a.t AS lastSeen INTO Silent
         FROM r a LEFT OUTER JOIN r b
         ON a.deviceId = b.deviceId AND DATEDIFF(second, a, b) BETWEEN 1 AND 300
         WHERE b.deviceId IS NULL",
        &evs,
    );
    // p2 went silent after 10:01; p1's last readings are only "silent" because the stream ends
    let p2: Vec<&(String, Value, String)> = out
        .iter()
        .filter(|r| r.1["deviceId"] == json!("p2"))
        .collect();
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].1["lastSeen"], json!("2026-01-01T10:01:00Z"));
    assert_eq!(p2[0].2, "2026-01-01T10:06:00.0000000Z");
    assert!(out
        .iter()
        .filter(|r| r.1["deviceId"] == json!("p1"))
        .all(|r| r.1["lastSeen"].as_str().unwrap() >= "2026-01-01T10:03:00Z"));
}

fn record_event() -> Value {
    json!({
        "DeviceId": "12345",
        "Location": {"Lat": 47, "Long": 122},
        "SensorReadings": {
            "Temperature": 80, "Humidity": 70, "CustomSensor01": 5, "CustomSensor02": 99,
            "SensorMetadata": {"Manufacturer": "ABC", "Version": "1.2.45"}
        }
    })
}

fn array_event() -> Value {
    json!({
        "DeviceId": "12345",
        "Location": {"Lat": 47, "Long": 122},
        "SensorReadings": {
            "Temperature": 80, "Humidity": 70, "CustomSensor01": 5, "CustomSensor02": 99,
            "CustomSensor03": [12, -5, 0]
        },
        "SensorMetadata": [
            {"smKey": "Manufacturer", "smValue": "ABC"},
            {"smKey": "Version", "smValue": "1.2.45"}
        ]
    })
}

const T: &str = "2020-01-29T00:00:00Z";

#[test]
fn cross_apply_parses_records_and_arrays() {
    // "Parse JSON and Avro data": GetRecordProperties. Records keep their property names
    // sorted here, so the rows come in name order (the doc lists them in document order).
    let out = run(
        "SELECT event.DeviceID, sensorReading.PropertyName, sensorReading.PropertyValue
         FROM input as event
         CROSS APPLY GetRecordProperties(event.SensorReadings) AS sensorReading",
        &[("input", record_event(), T)],
    );
    let got: Vec<(Value, Value)> = rows(&out)
        .iter()
        .map(|r| (r["PropertyName"].clone(), r["PropertyValue"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("CustomSensor01"), json!(5)),
            (json!("CustomSensor02"), json!(99)),
            (json!("Humidity"), json!(70)),
            (
                json!("SensorMetadata"),
                json!({"Manufacturer": "ABC", "Version": "1.2.45"})
            ),
            (json!("Temperature"), json!(80)),
        ]
    );
    assert!(rows(&out).iter().all(|r| r["DeviceID"] == json!("12345")));
    // GetArrayElements: ArrayIndex counts from 0
    let out = run(
        "SELECT DeviceId, CustomSensor03Record.ArrayIndex, CustomSensor03Record.ArrayValue
         FROM input
         CROSS APPLY GetArrayElements(SensorReadings.CustomSensor03) AS CustomSensor03Record",
        &[("input", array_event(), T)],
    );
    assert_eq!(
        rows(&out),
        vec![
            json!({"DeviceId": "12345", "ArrayIndex": 0, "ArrayValue": 12}),
            json!({"DeviceId": "12345", "ArrayIndex": 1, "ArrayValue": -5}),
            json!({"DeviceId": "12345", "ArrayIndex": 2, "ArrayValue": 0}),
        ]
    );
    let out = run(
        "SELECT i.DeviceId, SensorMetadataRecords.ArrayValue.smKey as smKey,
            SensorMetadataRecords.ArrayValue.smValue as smValue
         FROM input i
         CROSS APPLY GetArrayElements(SensorMetadata) AS SensorMetadataRecords",
        &[("input", array_event(), T)],
    );
    assert_eq!(
        rows(&out),
        vec![
            json!({"DeviceId": "12345", "smKey": "Manufacturer", "smValue": "ABC"}),
            json!({"DeviceId": "12345", "smKey": "Version", "smValue": "1.2.45"}),
        ]
    );
}

#[test]
fn cross_apply_then_two_left_joins_pivot_the_metadata() {
    // "Parse JSON and Avro data": the pivot with a step and two LEFT JOINs bound 0..0
    let out = run(
        "WITH DynamicCTE AS (
            SELECT i.DeviceId, SensorMetadataRecords.ArrayValue.smKey as smKey,
                SensorMetadataRecords.ArrayValue.smValue as smValue
            FROM input i
            CROSS APPLY GetArrayElements(SensorMetadata) AS SensorMetadataRecords)
         SELECT i.DeviceId, i.Location.*, V.smValue AS 'smVersion', M.smValue AS 'smManufacturer'
         FROM input i
         LEFT JOIN DynamicCTE V ON V.smKey = 'Version' and V.DeviceId = i.DeviceId AND DATEDIFF(minute,i,V) BETWEEN 0 AND 0
         LEFT JOIN DynamicCTE M ON M.smKey = 'Manufacturer' and M.DeviceId = i.DeviceId AND DATEDIFF(minute,i,M) BETWEEN 0 AND 0",
        &[("input", array_event(), T)],
    );
    assert_eq!(
        rows(&out),
        vec![
            json!({"DeviceId": "12345", "Lat": 47, "Long": 122, "smVersion": "1.2.45", "smManufacturer": "ABC"})
        ]
    );
}

#[test]
fn outer_apply_keeps_events_without_elements_and_bad_types_are_errors() {
    let q = "SELECT id, e.ArrayValue AS v FROM input OUTER APPLY GetArrayElements(a) AS e";
    let out = run(
        q,
        &[
            ("input", json!({"id": 1, "a": [7]}), T),
            ("input", json!({"id": 2, "a": []}), T),
            ("input", json!({"id": 3}), T),
        ],
    );
    assert_eq!(
        rows(&out),
        vec![
            json!({"id": 1, "v": 7}),
            json!({"id": 2, "v": null}),
            json!({"id": 3, "v": null}),
        ]
    );
    let mut e = Engine::new(Query::parse(q).unwrap(), EventPolicy::default());
    let err = e
        .record("input", &json!({"id": 4, "a": "x"}), at(T))
        .unwrap_err();
    assert!(
        err.to_string().contains("GetArrayElements needs an array"),
        "{err}"
    );
}

#[test]
fn union_combines_two_inputs_keeping_duplicates() {
    // UNION reference: toll entries and exits as one stream (UNION keeps duplicates)
    let evs = [
        (
            "Input1",
            json!({"TollId": 1, "EntryTime": "2026-01-01T10:00:01Z", "LicensePlate": "A"}),
            "2026-01-01T10:00:01Z",
        ),
        (
            "Input2",
            json!({"TollId": 1, "ExitTime": "2026-01-01T10:00:05Z", "LicensePlate": "A"}),
            "2026-01-01T10:00:05Z",
        ),
        (
            "Input1",
            json!({"TollId": 1, "EntryTime": "2026-01-01T10:00:09Z", "LicensePlate": "A"}),
            "2026-01-01T10:00:09Z",
        ),
    ];
    let out = run(
        "SELECT TollId, EntryTime AS Time, LicensePlate INTO Both
         FROM Input1 TIMESTAMP BY EntryTime
         UNION
         SELECT TollId, ExitTime AS Time, LicensePlate
         FROM Input2 TIMESTAMP BY ExitTime",
        &evs,
    );
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r.0 == "Both"));
    // UNION in a step: the reader sees both, and its windows wait for both sides
    let out = run(
        "WITH u AS (
            SELECT LicensePlate FROM Input1 TIMESTAMP BY EntryTime
            UNION SELECT LicensePlate FROM Input2 TIMESTAMP BY ExitTime)
         SELECT COUNT(*) AS n INTO c FROM u GROUP BY TumblingWindow(minute, 1)",
        &evs,
    );
    assert_eq!(rows(&out), vec![json!({"n": 3})]);
}

#[test]
fn reference_data_joins_per_patient_thresholds() {
    let q = Query::parse(
        "SELECT s.deviceId, s.temp, COALESCE(r.feverC, 38.0) AS threshold INTO Fever
         FROM temperature s TIMESTAMP BY t
         LEFT OUTER JOIN patients r ON s.deviceId = r.deviceId
         WHERE s.temp >= COALESCE(r.feverC, 38.0)",
    )
    .unwrap();
    assert_eq!(q.references(), vec!["patients"]);
    assert_eq!(q.inputs(), vec!["temperature"]);
    let mut e = Engine::new(q, EventPolicy::default());
    e.set_reference(
        "patients",
        vec![
            json!({"deviceId": "p1", "feverC": 37.5}),
            json!({"deviceId": "p2", "feverC": 38.5}),
        ],
    )
    .unwrap();
    assert_eq!(e.reference_len("PATIENTS"), Some(2));
    let t = |s: &str| format!("2026-01-01T10:00:0{s}Z");
    let evs = [
        (
            "temperature",
            json!({"deviceId": "p1", "temp": 37.6, "t": t("1")}),
            t("1"),
        ),
        (
            "temperature",
            json!({"deviceId": "p2", "temp": 38.2, "t": t("2")}),
            t("2"),
        ),
        (
            "temperature",
            json!({"deviceId": "p3", "temp": 38.1, "t": t("3")}),
            t("3"),
        ),
    ];
    let evs: Vec<(&str, Value, &str)> = evs
        .iter()
        .map(|(a, b, c)| (*a, b.clone(), c.as_str()))
        .collect();
    let out = run_on(&mut e, &evs);
    assert_eq!(
        rows(&out),
        vec![
            json!({"deviceId": "p1", "temp": 37.6, "threshold": 37.5}),
            json!({"deviceId": "p3", "temp": 38.1, "threshold": 38.0}),
        ]
    );
    let err = e.set_reference("patients", vec![json!([1])]).unwrap_err();
    assert!(err.to_string().contains("row 1"), "{err}");
}

#[test]
fn join_planning_errors_are_clear() {
    for (q, want) in [
        (
            "SELECT * FROM a JOIN b ON DATEDIFF(s, a, b) BETWEEN 0 AND 5",
            "SELECT * cannot be used with JOIN",
        ),
        (
            "SELECT a.x FROM a RIGHT JOIN b ON a.x = b.x",
            "not supported",
        ),
        (
            "SELECT a.x FROM a FULL OUTER JOIN b ON a.x = b.x",
            "not supported",
        ),
        (
            "SELECT a.x FROM a JOIN b ON DATEDIFF(day, a, b) BETWEEN 0 AND 8",
            "7 days",
        ),
        (
            "SELECT a.x FROM a JOIN b ON DATEDIFF(s, a, b) >= 0",
            "no upper end",
        ),
        (
            "SELECT a.x FROM a JOIN b ON DATEDIFF(s, a, b) BETWEEN 5 AND 1",
            "empty",
        ),
        (
            "WITH s AS (SELECT x FROM i) SELECT a.x FROM i a JOIN s b ON a.x = b.x",
            "needs a time bound",
        ),
        (
            "SELECT a.x FROM a JOIN b TIMESTAMP BY t ON a.x = b.x",
            "reference data",
        ),
        (
            "SELECT a.x FROM a JOIN a ON DATEDIFF(s, a, a) BETWEEN 0 AND 1",
            "different aliases",
        ),
        ("SELECT a.x FROM a, b", "comma join"),
        (
            "SELECT x FROM a CROSS APPLY GetThings(y) AS e",
            "GetArrayElements and GetRecordProperties",
        ),
        (
            "SELECT x INTO o FROM a UNION SELECT x INTO p FROM b",
            "only the first SELECT of a UNION",
        ),
    ] {
        let e = Query::parse(q).unwrap_err();
        assert!(e.message.contains(want), "{q}: {e}");
    }
}

#[test]
fn a_large_event_times_a_large_array_is_refused_not_expanded() {
    let q = "SELECT id, e.ArrayValue AS v FROM input CROSS APPLY GetArrayElements(a) AS e";
    let mut e = Engine::new(Query::parse(q).unwrap(), EventPolicy::default());
    let big = "x".repeat(200_000);
    let arr: Vec<i64> = (0..1000).collect();
    let err = e
        .record("input", &json!({"id": 1, "pad": big, "a": arr}), at(T))
        .unwrap_err();
    assert!(err.to_string().contains("expands to more than"), "{err}");
    // the same array in a small event is fine
    let rows = e
        .record("input", &json!({"id": 2, "a": arr}), at(T))
        .unwrap();
    let rows: usize = rows.len() + e.flush().len();
    assert_eq!(rows, 1000);
}

#[test]
fn left_outer_rows_with_a_bound_before_the_left_event_come_out_once_in_order() {
    // the right event must come 5..10 s *before* the left one; unmatched left rows must not land
    // behind the watermark (a window over them would come out twice)
    let q = "SELECT COUNT(*) AS n, System.Timestamp() AS t INTO o
        FROM a TIMESTAMP BY t LEFT OUTER JOIN b TIMESTAMP BY t
        ON DATEDIFF(second, b, a) BETWEEN 5 AND 10
        GROUP BY TumblingWindow(second, 5)";
    let mut e = Engine::new(Query::parse(q).unwrap(), EventPolicy::default());
    let mut out = Vec::new();
    for s in 0..60 {
        let t = format!("2026-01-01T10:00:{s:02}Z");
        out.extend(e.record("a", &json!({"t": t}), at(&t)).unwrap());
        if s % 7 == 0 {
            out.extend(e.record("b", &json!({"t": t}), at(&t)).unwrap());
        }
    }
    out.extend(e.advance(at("2026-01-01T10:02:00Z")));
    let ends: Vec<String> = out.iter().map(|r| format_timestamp(r.timestamp)).collect();
    let mut sorted = ends.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ends, sorted, "each window once, in order");
    let total: i64 = out.iter().map(|r| r.row["n"].as_i64().unwrap()).sum();
    assert!(
        total >= 60,
        "every left event is counted, matched or not: {total}"
    );
}

#[test]
fn an_on_that_fails_for_one_pair_loses_no_row() {
    let q = "SELECT a.id, b.v INTO o FROM a TIMESTAMP BY t LEFT OUTER JOIN b TIMESTAMP BY t
        ON DATEDIFF(second, a, b) BETWEEN 0 AND 5 AND b.v - a.off > 0";
    let mut e = Engine::new(Query::parse(q).unwrap(), EventPolicy::default());
    let t = |s: u32| format!("2026-01-01T10:00:{s:02}Z");
    let mut out = Vec::new();
    out.extend(
        e.record("a", &json!({"id": 1, "off": 1, "t": t(1)}), at(&t(1)))
            .unwrap(),
    );
    out.extend(
        e.record("a", &json!({"id": 2, "off": "x", "t": t(1)}), at(&t(1)))
            .unwrap(),
    );
    out.extend(
        e.record("b", &json!({"v": 5, "t": t(2)}), at(&t(2)))
            .unwrap(),
    );
    out.extend(e.advance(at("2026-01-01T10:01:00Z")));
    let mut got: Vec<(i64, Value)> = out
        .iter()
        .map(|r| (r.row["id"].as_i64().unwrap(), r.row["v"].clone()))
        .collect();
    got.sort_by_key(|g| g.0);
    // id 1 matched; id 2's ON could not be evaluated: no match, so its NULL row comes out
    assert_eq!(got, vec![(1, json!(5)), (2, json!(null))]);
    let w = e.take_warnings();
    assert!(w.iter().any(|w| w.contains("did not match")), "{w:?}");
}

#[test]
fn hostile_join_bounds_are_errors_not_panics() {
    for q in [
        "SELECT a.x FROM a JOIN b ON DATEDIFF(second, a, b) > 10000000000000000000 AND DATEDIFF(second, a, b) < 5",
        "SELECT a.x FROM a JOIN b ON DATEDIFF(second, b, a) >= -9223372036854775807 AND DATEDIFF(second, a, b) < 5",
        "SELECT a.x FROM a JOIN b ON DATEDIFF(day, a, b) BETWEEN -9223372036854775807 AND 9223372036854775807",
        "SELECT a.x FROM a JOIN b ON DATEDIFF(second, a, b) BETWEEN 0 AND 2.5",
        "SELECT a.x FROM a JOIN b ON DATEDIFF(second, a, b) < 10 + 0",
        "SELECT a.x FROM a JOIN b ON a.k = b.k AND (DATEDIFF(second, a, b) < 5 OR a.k = 1)",
        "SELECT a.x FROM a JOIN b ON a.k = b.k AND LAG(a.k) OVER (LIMIT DURATION(s, 1)) = 1 AND DATEDIFF(s, a, b) BETWEEN 0 AND 1",
    ] {
        assert!(Query::parse(q).is_err(), "{q}");
    }
    let e = Query::parse("SELECT a.x FROM a JOIN b ON DATEDIFF(second, a, b) BETWEEN 0 AND 2.5")
        .unwrap_err();
    assert!(e.message.contains("not understood"), "{e}");
}

#[test]
fn removed_reference_data_matches_nothing() {
    let q = Query::parse("SELECT s.id INTO o FROM s JOIN r ON s.id = r.id").unwrap();
    let mut e = Engine::new(q, EventPolicy::default());
    e.set_reference("r", vec![json!({"id": 1})]).unwrap();
    assert_eq!(e.record("s", &json!({"id": 1}), at(T)).unwrap().len(), 1);
    e.remove_reference("R");
    assert_eq!(e.reference_len("r"), None);
    assert!(e.record("s", &json!({"id": 1}), at(T)).unwrap().is_empty());
}
