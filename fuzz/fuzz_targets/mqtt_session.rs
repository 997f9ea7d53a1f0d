//! MqttServerModule's session layer (`connection.rs` and the broker behind it): up to three
//! devices talk to one server over in-memory streams (`tokio::io::duplex`), with the clock
//! paused so keep-alive, connect and write timeouts fire without waiting.
//!
//! Input: a mode byte (bit 0: tight limits; bits 1-2: number of devices - 1), then records of
//! `[ctl][len lo][len hi][len bytes]`: the bytes a device sends; `ctl & 3` is the device (modulo
//! their number), `ctl >> 2` squared times 50 ms is the pause before (up to 198 s, past the
//! keep-alive of most CONNECTs; an hour in all at most).
//!
//! Checks: no panic anywhere in the server; once the devices have sent everything and closed
//! their side, every connection ends within an hour of (virtual) time: no hang, whatever was
//! sent. A publish whose body starts with `!` is refused for good by the stub edgeHub, one
//! starting with `~` is acknowledged after 3 s.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mqtt_server::{BoxFuture, Message, ForwardError, Forwarder, Server, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct StubEdgeHub;

impl Forwarder for StubEdgeHub {
    fn forward(
        &self,
        _output: String,
        message: Message,
    ) -> BoxFuture<'_, Result<(), ForwardError>> {
        Box::pin(async move {
            match message.body.first() {
                Some(b'!') => Err(ForwardError::permanent("refused by the stub edgeHub")),
                Some(b'~') => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}

fn settings(tight: bool) -> Settings {
    let mut s = Settings::default();
    if tight {
        s.max_payload = 64;
        s.max_inflight = 2;
        s.buffer_messages = 3;
        s.buffer_bytes = 256;
        s.forward_concurrency = 1;
        s.session_queue = 4;
        s.offline_bytes = 256;
        s.max_retained = 3;
        s.session_expiry_secs = 30;
        s.write_timeout_secs = 2;
        s.connect_timeout_secs = 2;
    }
    s
}

/// `(device, pause, bytes)` records.
fn records(mut data: &[u8], devices: usize) -> Vec<(usize, Duration, Vec<u8>)> {
    let mut out = Vec::new();
    let mut paused = 0;
    while let Some((&ctl, rest)) = data.split_first() {
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        // at most an hour of pauses in all, so that a day without an end is a hang
        let pause = (u64::from(ctl >> 2).pow(2) * 50).min(3_600_000 - paused);
        paused += pause;
        out.push((
            usize::from(ctl & 3) % devices,
            Duration::from_millis(pause),
            rest[..len].to_vec(),
        ));
        data = &rest[len..];
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let devices = usize::from((mode >> 1) & 3).min(2) + 1;
    let recs = records(data, devices);
    let Ok(server) = Server::new(settings(mode & 1 == 1), Arc::new(StubEdgeHub)) else {
        panic!("the fuzz settings are valid");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let mut ends = Vec::new();
        let mut clients = Vec::new();
        for d in 0..devices {
            let (client, server_end) = tokio::io::duplex(16 * 1024);
            ends.push(server_end);
            let mine: Vec<_> = recs
                .iter()
                .filter(|r| r.0 == d)
                .map(|r| (r.1, r.2.clone()))
                .collect();
            clients.push(tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(client);
                let reader = tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = rd.read_to_end(&mut sink).await;
                });
                for (pause, bytes) in mine {
                    tokio::time::sleep(pause).await;
                    if wr.write_all(&bytes).await.is_err() {
                        break; // the server closed the connection
                    }
                }
                let _ = wr.shutdown().await;
                // the server must close its side too
                let _ = reader.await;
            }));
        }
        let all = async move {
            server.serve_streams(ends).await;
            for c in clients {
                let _ = c.await;
            }
        };
        // the pauses add up to an hour at most: a session still open after a day hangs
        if tokio::time::timeout(Duration::from_secs(24 * 3600), all)
            .await
            .is_err()
        {
            panic!("a connection did not end after its device closed the stream");
        }
    });
});
