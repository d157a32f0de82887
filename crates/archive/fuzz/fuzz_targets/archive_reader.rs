//! Fuzz the file reader: open, list, read and verify arbitrary bytes as an archive file.
#![no_main]

mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exercise::archive_file(data);
});
