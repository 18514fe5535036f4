use bytes::BytesMut;
use redswitch::esl::{ContentType, EslCodec, Event};
use tokio_util::codec::Decoder;
fn main() {
    let data = include_bytes!("../benches/data/04-outbound-A.fs-stream");
    let mut codec = EslCodec::client();
    let mut buf = BytesMut::from(&data[..]);
    let mut frames = vec![];
    while let Some(f) = codec.decode(&mut buf).unwrap() {
        if f.content_type() == ContentType::EventPlain {
            frames.push(f);
        }
    }
    let sizes: Vec<usize> = frames.iter().map(|f| f.body().unwrap().len()).collect();
    println!("{} frames sizes {:?}", frames.len(), sizes);
    let t = std::time::Instant::now();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000);
    for _ in 0..n {
        for f in &frames {
            std::hint::black_box(Event::from_frame(f).unwrap());
        }
    }
    let el = t.elapsed();
    println!(
        "{:.0} events/s",
        (n * frames.len()) as f64 / el.as_secs_f64()
    );
}
