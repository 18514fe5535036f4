//! Media helpers: how long a playback takes, and writing recordings as real
//! WAV files (8 kHz, 16-bit PCM, silent).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long something takes to play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayLength {
    /// Plays for this long.
    For(Duration),
    /// Plays until stopped (`loops=-1`, `silence_stream://-1`).
    Forever,
    /// Cannot be opened: `FILE NOT FOUND`.
    NotFound,
}

/// The `Playback-File-Type` FreeSWITCH reports.
pub fn file_type(path: &str) -> &str {
    match path.split_once("://") {
        Some((scheme, _)) => scheme,
        None => Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("native"),
    }
}

/// `%(on,off,freq…)` segments summed, times `loops` (tone_stream syntax).
fn tone_length(spec: &str) -> PlayLength {
    let mut loops: i64 = 1;
    let mut per_loop_ms: u64 = 0;
    for part in spec.split(';') {
        let part = part.trim();
        if let Some(n) = part.strip_prefix("loops=") {
            loops = n.trim().parse().unwrap_or(1);
        } else if let Some(inner) = part.strip_prefix("%(") {
            let inner = inner.strip_suffix(')').unwrap_or(inner);
            let mut nums = inner
                .split(',')
                .map(|n| n.trim().parse::<u64>().unwrap_or(0));
            per_loop_ms += nums.next().unwrap_or(0) + nums.next().unwrap_or(0);
        }
    }
    if loops < 0 {
        PlayLength::Forever
    } else {
        PlayLength::For(Duration::from_millis(per_loop_ms * loops.max(1) as u64))
    }
}

/// Resolves a file name against the media directory.
pub fn media_path(media_dir: Option<&Path>, file: &str) -> PathBuf {
    let p = Path::new(file);
    match media_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// How long `playback <what>` takes.
pub fn play_length(what: &str, media_dir: Option<&Path>, file_time: Duration) -> PlayLength {
    if let Some(spec) = what.strip_prefix("tone_stream://") {
        return tone_length(spec);
    }
    if let Some(ms) = what.strip_prefix("silence_stream://") {
        let ms: i64 = ms
            .split(',')
            .next()
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0);
        return if ms < 0 {
            PlayLength::Forever
        } else {
            PlayLength::For(Duration::from_millis(ms as u64))
        };
    }
    if let Some(list) = what.strip_prefix("file_string://") {
        let mut total = Duration::ZERO;
        for item in list.split('!') {
            match play_length(item, media_dir, file_time) {
                PlayLength::For(d) => total += d,
                other => return other,
            }
        }
        return PlayLength::For(total);
    }
    let path = media_path(media_dir, what);
    let must_exist = media_dir.is_some() || path.is_absolute();
    if must_exist && !path.is_file() {
        PlayLength::NotFound
    } else {
        PlayLength::For(file_time)
    }
}

/// A WAV file of `ms` milliseconds of silence: 8 kHz, 16-bit, `channels`.
pub fn silent_wav(ms: u64, channels: u16) -> Vec<u8> {
    let rate: u32 = 8000;
    let samples = (ms * u64::from(rate) / 1000) as u32;
    let block = 2 * u32::from(channels);
    let data_len = samples * block;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * block).to_le_bytes());
    out.extend_from_slice(&(block as u16).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.resize(44 + data_len as usize, 0);
    out
}

/// Writes a recording, creating its directory. Errors are logged: a switch
/// that cannot write a recording goes on with the call.
pub async fn write_recording(path: PathBuf, ms: u64, channels: u16) {
    let bytes = silent_wav(ms, channels);
    if let Some(dir) = path.parent()
        && let Err(e) = tokio::fs::create_dir_all(dir).await
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot create recording directory");
        return;
    }
    if let Err(e) = tokio::fs::write(&path, bytes).await {
        tracing::warn!(path = %path.display(), error = %e, "cannot write recording");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_lengths() {
        let f = Duration::from_millis(500);
        assert_eq!(
            play_length("tone_stream://%(500,500,440);loops=2", None, f),
            PlayLength::For(Duration::from_secs(2))
        );
        assert_eq!(
            play_length("tone_stream://%(60000,0,440)", None, f),
            PlayLength::For(Duration::from_secs(60))
        );
        assert_eq!(
            play_length("tone_stream://%(100,100,440);loops=-1", None, f),
            PlayLength::Forever
        );
        assert_eq!(
            play_length("silence_stream://250", None, f),
            PlayLength::For(Duration::from_millis(250))
        );
        assert_eq!(
            play_length("/definitely/not/here.wav", None, f),
            PlayLength::NotFound
        );
        assert_eq!(play_length("hello.wav", None, f), PlayLength::For(f));
        assert_eq!(file_type("tone_stream://x"), "tone_stream");
        assert_eq!(file_type("a/b.wav"), "wav");
    }

    #[test]
    fn wav_header_and_length() {
        let w = silent_wav(1000, 1);
        assert_eq!(w.len(), 44 + 16000);
        assert_eq!(&w[0..4], b"RIFF");
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes([w[24], w[25], w[26], w[27]]), 8000);
        assert_eq!(u16::from_le_bytes([w[34], w[35]]), 16);
        let s = silent_wav(500, 2);
        assert_eq!(s.len(), 44 + 8000 * 2);
    }
}
