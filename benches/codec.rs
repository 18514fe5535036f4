//! Codec and event-decoding throughput on recorded FreeSWITCH 1.10 output.
//!
//! `data/04-outbound-A.fs-stream` is every byte FreeSWITCH sent on one
//! outbound socket in trace 04 (connect reply, replies and 2–5 KiB plain
//! events); `data/01-inbound.fs-stream` is an inbound session with JSON
//! events. Targets (one core): framing ≥ 1 GB/s, full decode of
//! plain events ≥ 500,000 events/s.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redswitch::esl::{
    Command, ContentType, EslCodec, Event, Frame,
    command::{CallCommand, Execute, SendMsg},
};
use std::hint::black_box;
use tokio_util::codec::{Decoder, Encoder};

const OUTBOUND: &[u8] = include_bytes!("data/04-outbound-A.fs-stream");
const INBOUND_JSON: &[u8] = include_bytes!("data/01-inbound.fs-stream");

fn frames(stream: &[u8]) -> Vec<Frame> {
    let mut codec = EslCodec::client();
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).expect("recorded stream decodes") {
        out.push(frame);
    }
    out
}

fn events_of(stream: &[u8], kind: ContentType) -> Vec<Frame> {
    frames(stream)
        .into_iter()
        .filter(|f| f.content_type() == kind)
        .collect()
}

fn bench_framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(OUTBOUND.len() as u64));
    group.bench_function("decode recorded outbound stream", |b| {
        b.iter(|| {
            let mut codec = EslCodec::client();
            let mut buf = BytesMut::from(OUTBOUND);
            let mut n = 0;
            while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
                n += black_box(frame).body().map_or(0, |b| b.len());
            }
            n
        })
    });
    group.finish();
}

fn bench_events(c: &mut Criterion) {
    let plain = events_of(OUTBOUND, ContentType::EventPlain);
    let json = events_of(INBOUND_JSON, ContentType::EventJson);
    assert!(!plain.is_empty() && !json.is_empty());
    let mut group = c.benchmark_group("event decode");
    group.throughput(Throughput::Elements(plain.len() as u64));
    group.bench_function(format!("plain ({} recorded events)", plain.len()), |b| {
        b.iter(|| {
            for f in &plain {
                let e = Event::from_frame(f).expect("recorded events decode");
                black_box(e.name());
            }
        })
    });
    group.throughput(Throughput::Elements(json.len() as u64));
    group.bench_function(format!("json ({} recorded events)", json.len()), |b| {
        b.iter(|| {
            for f in &json {
                let e = Event::from_frame(f).expect("recorded events decode");
                black_box(e.name());
            }
        })
    });
    group.finish();

    let decoded: Vec<Event> = plain
        .iter()
        .map(|f| Event::from_frame(f).expect("decodes"))
        .collect();
    let mut group = c.benchmark_group("event encode");
    group.throughput(Throughput::Elements(decoded.len() as u64));
    group.bench_function("plain", |b| {
        let mut out = Vec::with_capacity(8192);
        b.iter(|| {
            for e in &decoded {
                out.clear();
                e.encode_plain(&mut out);
                black_box(&out);
            }
        })
    });
    group.finish();
}

fn bench_commands(c: &mut Criterion) {
    let playback = Command::SendMsg(SendMsg {
        uuid: None,
        command: CallCommand::Execute(Execute {
            app: "playback".into(),
            arg: Some("tone_stream://%(500,500,440);loops=2".into()),
            event_lock: true,
            ..Default::default()
        }),
        event_uuid: Some("077a9860-3740-4c60-90e0-e6fc5493d9d0".into()),
    });
    let mut codec = EslCodec::client();
    let mut buf = BytesMut::with_capacity(4096);
    c.bench_function("encode sendmsg execute", |b| {
        b.iter(|| {
            buf.clear();
            codec.encode(&playback, &mut buf).expect("encodes");
            black_box(&buf);
        })
    });
}

criterion_group!(benches, bench_framing, bench_events, bench_commands);
criterion_main!(benches);
