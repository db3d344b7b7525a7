//! Images end to end: multipart upload, processing in the image worker, variants served back,
//! failures reported and notified.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::io::Cursor;

use image::{ImageFormat, RgbImage};
use serde_json::Value;
use support::{System, saga_id};

/// A 300×200 gradient, encoded.
fn picture(format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A tiny PNG whose header claims 100,000 × 100,000 pixels.
fn bomb() -> Vec<u8> {
    let mut png = Vec::new();
    RgbImage::new(1, 1)
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4), ... CRC after 13 bytes.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

async fn upload(
    system: &System,
    file: Vec<u8>,
    name: &str,
    variants: &str,
    customer: Option<&str>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(file).file_name(name.to_owned()),
        )
        .text("variants", variants.to_owned());
    if let Some(customer) = customer {
        form = form.text("customer_id", customer.to_owned());
    }
    let response = system
        .client
        .post(format!("{}/v1/images", system.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads `size` bytes over a raw connection, writing the body while reading the answer: the
/// gateway answers 413 before it has read everything, and may close the connection on a body
/// still being written, which an ordinary client reports as a broken pipe.
async fn raw_upload(system: &System, size: usize, declare_length: bool) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = system.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let boundary = "warren-boundary";
    let head = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"variants\"\r\n\r\n[\"grayscale\"]\r\n\
         --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() + size + tail.len();
    let framing = if declare_length {
        format!("content-length: {length}")
    } else {
        "transfer-encoding: chunked".to_owned()
    };
    let request = format!(
        "POST /v1/images HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {}\r\n\
         content-type: multipart/form-data; boundary={boundary}\r\n{framing}\r\nconnection: close\r\n\r\n",
        system.token
    );
    let writing = tokio::spawn(async move {
        let mut body = head.into_bytes();
        body.extend(std::iter::repeat_n(7u8, size));
        body.extend_from_slice(tail.as_bytes());
        let _ = writer.write_all(request.as_bytes()).await;
        for chunk in body.chunks(64 * 1024) {
            let written = if declare_length {
                writer.write_all(chunk).await
            } else {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                writer.write_all(&framed).await
            };
            if written.is_err() {
                return;
            }
        }
        if !declare_length {
            let _ = writer.write_all(b"0\r\n\r\n").await;
        }
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer).await;
    writing.abort();
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // A chunked answer wraps the JSON in chunk sizes: take the object itself.
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .map_or("null", |(a, b)| &body[a..=b]);
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

async fn variant(system: &System, url: &str) -> (String, image::DynamicImage) {
    let response = system
        .client
        .get(format!("{}{url}", system.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.bytes().await.unwrap();
    (content_type, image::load_from_memory(&bytes).unwrap())
}

#[tokio::test]
async fn a_png_and_a_jpeg_become_variants_of_the_right_size() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    let variants = r#"["thumbnail:128", "resize:64x48@jpeg", "grayscale|rotate:90@webp", "crop:10,10,50,40", "blur:2.0", "flip:h"]"#;
    for format in [ImageFormat::Png, ImageFormat::Jpeg] {
        let (status, answer) =
            upload(&system, picture(format), "gradient", variants, Some("c-1")).await;
        assert_eq!(status, 202, "{answer}");
        let events = system.follow(&saga_id(&answer)).await;
        assert_eq!(events.last().unwrap()["state"], "completed", "{events:?}");

        let image_id = answer["image_id"].as_str().unwrap();
        let (status, image) = system.get(&format!("/v1/images/{image_id}")).await;
        assert_eq!(status, 200);
        assert_eq!(image["status"], "completed", "{image}");
        let expected = [
            ("thumbnail:128", "image/png", 128, 85),
            ("resize:64x48@jpeg", "image/jpeg", 64, 48),
            ("grayscale|rotate:90@webp", "image/webp", 200, 300),
            ("crop:10,10,50,40", "image/png", 50, 40),
            ("blur:2.0", "image/png", 300, 200),
            ("flip:h", "image/png", 300, 200),
        ];
        let listed = image["variants"].as_array().unwrap();
        assert_eq!(listed.len(), expected.len());
        for (name, content_type, width, height) in expected {
            let entry = listed
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {image}"));
            let (served_type, decoded) = variant(&system, entry["url"].as_str().unwrap()).await;
            assert_eq!(served_type, content_type, "{name}");
            assert_eq!(
                (decoded.width(), decoded.height()),
                (width, height),
                "{name}"
            );
        }
    }
    system.stop().await;
}

#[tokio::test]
async fn a_bomb_and_a_truncated_file_fail_and_are_notified_while_the_worker_keeps_serving() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    let mut truncated = picture(ImageFormat::Jpeg);
    truncated.truncate(truncated.len() / 2);
    for (name, file) in [("bomb.png", bomb()), ("half.jpg", truncated)] {
        let (status, answer) =
            upload(&system, file, name, r#"["thumbnail:64"]"#, Some("c-9")).await;
        assert_eq!(status, 202, "{answer}");
        let events = system.follow(&saga_id(&answer)).await;
        let saga = events.last().unwrap();
        assert_eq!(saga["state"], "compensated", "{name}: {events:?}");
        let (_, image) = system
            .get(&format!(
                "/v1/images/{}",
                answer["image_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(image["status"], "failed", "{name}: {image}");
        assert!(
            image["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{image}"
        );
    }
    system
        .until("two failed-image notifications", || async {
            let (_, list) = system.get("/v1/notifications?customer_id=c-9").await;
            list.as_array()
                .is_some_and(|l| l.len() == 2 && l.iter().all(|n| n["kind"] == "image_failed"))
        })
        .await;
    // The worker is still serving.
    let (_, answer) = upload(
        &system,
        picture(ImageFormat::Png),
        "fine.png",
        r#"["thumbnail:64"]"#,
        None,
    )
    .await;
    assert_eq!(
        system.follow(&saga_id(&answer)).await.last().unwrap()["state"],
        "completed"
    );
    system.stop().await;
}

#[tokio::test]
async fn oversize_uploads_and_bad_operations_are_refused_before_anything_is_published() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    // The tests' upload limit is 1 MiB: refused from the declared length before the body is
    // read, and counted while it streams when no length is declared.
    for declared in [true, false] {
        let (status, answer) = raw_upload(&system, 2 * 1024 * 1024, declared).await;
        assert_eq!(status, 413, "declared length: {declared}: {answer}");
        assert_eq!(answer["error"]["code"], "too_large");
    }
    for variants in [
        r#"["sepia"]"#,
        r#"["rotate:45"]"#,
        r#"["thumbnail:0"]"#,
        r#"not json"#,
        r#"[]"#,
    ] {
        let (status, answer) =
            upload(&system, picture(ImageFormat::Png), "ok.png", variants, None).await;
        assert_eq!(status, 422, "{variants}: {answer}");
        assert!(answer["error"]["message"].is_string());
    }
    let (status, _) = system
        .get("/v1/images/0190d1f0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas.sagas")
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(sagas, 0, "nothing was started");
    system.stop().await;
}
