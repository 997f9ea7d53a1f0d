//! Reading only the fields a query reads (`Query::fields_read` + `parse_event`) changes no output:
//! each query here runs twice over the same events, once on whole events and once on projected
//! ones, and the rows must be equal. The events carry fields no query reads, in several spellings.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use stream_query::{parse_event, Engine, EventPolicy, Query};

const QUERIES: &[&str] = &[
    r#"SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)"#,
    "SELECT deviceId, Avg(temp) AS avg, Max(temp) AS max, Count(*) AS n, System.Timestamp() AS w INTO o FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, HoppingWindow(second,60,10)",
    "SELECT t.deviceId AS d, t.temp INTO o FROM temperature t TIMESTAMP BY timeCreated WHERE t.temp > 37.5",
    "SELECT DEVICEID, LAG(temp) OVER (PARTITION BY deviceid LIMIT DURATION(minute, 5)) AS prev INTO o FROM temperature TIMESTAMP BY timecreated OVER deviceId",
    "SELECT deviceId, COUNT(*) AS n INTO o FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, SlidingWindow(second, 30) HAVING COUNT(*) > 2",
    "SELECT site.room AS room, Avg(temp) AS a INTO o FROM temperature TIMESTAMP BY timeCreated GROUP BY site.room, TumblingWindow(second, 20)",
    "SELECT TopOne() OVER (ORDER BY temp DESC) AS hottest INTO o FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second, 30)",
    "SELECT * INTO o FROM temperature TIMESTAMP BY timeCreated WHERE temp > 38",
    "SELECT deviceId, EventEnqueuedUtcTime AS q INTO o FROM temperature",
    "WITH hot AS (SELECT deviceId, temp, timeCreated FROM temperature TIMESTAMP BY timeCreated WHERE temp > 37) SELECT deviceId, COUNT(*) AS n INTO o FROM hot GROUP BY deviceId, TumblingWindow(second, 60)",
];

fn events() -> Vec<(String, DateTime<Utc>)> {
    let t0: DateTime<Utc> = "2026-11-24T08:00:00Z".parse().unwrap();
    (0..400)
        .map(|i| {
            let t = t0 + Duration::milliseconds(731 * i);
            let temp = 36.0 + ((i * 7919) % 40) as f64 / 10.0;
            let body = format!(
                r#"{{"deviceId":"dev-{}","temp":{temp},"timeCreated":"{}","site":{{"room":"r{}","floor":2}},"noise":[1,{{"x":"y"}},"z"],"Battery":{},"fw":"1.{}"}}"#,
                i % 7,
                t.to_rfc3339(),
                i % 3,
                i % 100,
                i % 5
            );
            (body, t + Duration::milliseconds(200))
        })
        .collect()
}

fn run(q: &Query, project: bool) -> Vec<(String, serde_json::Value)> {
    let fields = if project {
        q.fields_read("temperature")
    } else {
        None
    };
    let mut e = Engine::new(q.clone(), EventPolicy::default());
    let mut out = Vec::new();
    for (body, arrival) in events() {
        let v = parse_event(&body, fields.as_deref()).unwrap();
        if let Ok(rows) = e.record_owned("temperature", v, arrival) {
            out.extend(
                rows.into_iter()
                    .map(|r| (r.output, serde_json::Value::Object(r.row))),
            );
        }
    }
    out.extend(
        e.flush()
            .into_iter()
            .map(|r| (r.output, serde_json::Value::Object(r.row))),
    );
    out
}

#[test]
fn projected_events_give_the_same_rows() {
    for text in QUERIES {
        let q = Query::parse(text).unwrap();
        let whole = run(&q, false);
        assert!(
            !whole.is_empty(),
            "{text}: no rows at all, the test would prove nothing"
        );
        assert_eq!(run(&q, true), whole, "{text}");
    }
}

#[test]
fn fields_read_lists_what_the_query_names() {
    let q = Query::parse(QUERIES[0]).unwrap();
    assert_eq!(
        q.fields_read("temperature"),
        Some(vec!["temp".to_string(), "timecreated".to_string()])
    );
    let q = Query::parse(QUERIES[5]).unwrap();
    assert_eq!(
        q.fields_read("temperature"),
        Some(vec!["site".into(), "temp".into(), "timecreated".into()])
    );
    // whole events: SELECT *, TopOne()
    assert_eq!(
        Query::parse(QUERIES[6]).unwrap().fields_read("temperature"),
        None
    );
    assert_eq!(
        Query::parse(QUERIES[7]).unwrap().fields_read("temperature"),
        None
    );
    // ASA's arrival-time fields are kept when named
    let f = Query::parse(QUERIES[8])
        .unwrap()
        .fields_read("temperature")
        .unwrap();
    assert!(f.contains(&"eventenqueuedutctime".to_string()), "{f:?}");
}
