//! Fuzz the one-pass stream verifier (`kpromote verify -`).
#![no_main]

mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exercise::archive_stream(data);
});
