//! A guard in front of the protocol library's stdio transport, which stops reading for good at
//! the first message it cannot decode. Here every frame is checked first: well-formed JSON-RPC
//! goes through; anything else is answered with a JSON-RPC error and skipped, and the stream
//! resynchronises on the next `Content-Length` header. Our answers are written between the
//! library's frames, never inside one.

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const HEADER: &[u8] = b"Content-Length";
/// Larger frames are refused (the biggest honest message is a whole document).
const MAX_FRAME: usize = 512 << 20;
const PIPE_BYTES: usize = 1 << 20;

/// Starts the guard between `input`/`output` and the returned (server input, server output).
pub fn guard<R, W>(input: R, output: W) -> (DuplexStream, DuplexStream)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (server_in, to_server) = tokio::io::duplex(PIPE_BYTES);
    let (from_server, server_out) = tokio::io::duplex(PIPE_BYTES);
    let (errors, error_frames) = unbounded_channel();
    tokio::spawn(read_input(input, to_server, errors));
    tokio::spawn(write_output(from_server, output, error_frames));
    (server_in, server_out)
}

/// Frames a JSON body.
fn frame(body: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn error_frame(id: Value, code: i64, message: &str) -> Vec<u8> {
    frame(
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            .to_string(),
    )
}

async fn read_input<R: AsyncRead + Unpin>(
    mut input: R,
    mut to_server: DuplexStream,
    errors: UnboundedSender<Vec<u8>>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Take every complete frame in the buffer.
        loop {
            match next_frame(&mut buffer) {
                Frame::Incomplete => break,
                Frame::Garbage(reason) => {
                    tracing::warn!("dropped bytes from the client: {reason}");
                    let _ = errors.send(error_frame(
                        Value::Null,
                        -32700,
                        &format!("Parse error: {reason}"),
                    ));
                }
                Frame::Body(body) => match check(&body) {
                    Ok(()) => {
                        let bytes = frame(std::str::from_utf8(&body).expect("checked UTF-8"));
                        if to_server.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Err((id, code, reason)) => {
                        tracing::warn!("refused a message from the client: {reason}");
                        let _ = errors.send(error_frame(id, code, &reason));
                    }
                },
            }
        }
        match input.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                // End of input: let the server see it and shut down.
                let _ = to_server.shutdown().await;
                return;
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

enum Frame {
    Incomplete,
    Body(Vec<u8>),
    Garbage(String),
}

/// Cuts the next frame off the front of `buffer`.
fn next_frame(buffer: &mut Vec<u8>) -> Frame {
    let Some(header_end) = find(buffer, b"\r\n\r\n") else {
        // Headers never hold this much: the stream lost its footing.
        if buffer.len() > 64 * 1024 {
            return skip_to_next_header(buffer, "headers without an end".into());
        }
        return Frame::Incomplete;
    };
    let headers = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let length = headers.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("Content-Length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let Some(length) = length.filter(|&n| n <= MAX_FRAME) else {
        return skip_to_next_header(
            buffer,
            format!("no valid Content-Length in headers {headers:?}"),
        );
    };
    let start = header_end + 4;
    if buffer.len() < start + length {
        return Frame::Incomplete;
    }
    let body = buffer[start..start + length].to_vec();
    buffer.drain(..start + length);
    Frame::Body(body)
}

/// Drops bytes up to the next `Content-Length` after the start of the buffer.
fn skip_to_next_header(buffer: &mut Vec<u8>, reason: String) -> Frame {
    let next = find(&buffer[1..], HEADER).map_or(buffer.len(), |i| i + 1);
    buffer.drain(..next);
    Frame::Garbage(reason)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a body is a JSON-RPC message the library can decode; else the error to answer.
fn check(body: &[u8]) -> Result<(), (Value, i64, String)> {
    let text = std::str::from_utf8(body)
        .map_err(|e| (Value::Null, -32700, format!("Parse error: not UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (Value::Null, -32700, format!("Parse error: {e}")))?;
    let Value::Object(message) = &value else {
        return Err((
            Value::Null,
            -32600,
            "Invalid Request: a message must be an object".into(),
        ));
    };
    let id = message.get("id").cloned();
    let valid_id =
        |id: &Value| matches!(id, Value::Number(n) if n.is_i64()) || id.is_string() || id.is_null();
    let reply_id = id.clone().filter(valid_id).unwrap_or(Value::Null);
    let invalid = |reason: &str| {
        Err((
            reply_id.clone(),
            -32600,
            format!("Invalid Request: {reason}"),
        ))
    };
    if message.get("jsonrpc") != Some(&Value::from("2.0")) {
        return invalid("`jsonrpc` must be \"2.0\"");
    }
    if id.as_ref().is_some_and(|id| !valid_id(id)) {
        return invalid("`id` must be an integer, a string or null");
    }
    match message.get("method") {
        Some(Value::String(_)) => {
            if message
                .get("params")
                .is_some_and(|p| !(p.is_object() || p.is_array() || p.is_null()))
            {
                return invalid("`params` must be an object or an array");
            }
            Ok(())
        }
        Some(_) => invalid("`method` must be a string"),
        None if id.is_some()
            && (message.contains_key("result") || message.contains_key("error")) =>
        {
            Ok(())
        }
        None => invalid("neither a request, a notification nor a response"),
    }
}

async fn write_output<W: AsyncWrite + Unpin>(
    mut from_server: DuplexStream,
    mut output: W,
    mut errors: UnboundedReceiver<Vec<u8>>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from_server.read(&mut chunk) => match read {
                Ok(0) | Err(_) => {
                    let _ = output.write_all(&buffer).await;
                    let _ = output.flush().await;
                    return;
                }
                Ok(n) => {
                    buffer.extend_from_slice(&chunk[..n]);
                    // Forward whole frames only, so our error frames never land inside one.
                    while let Frame::Body(body) = next_frame(&mut buffer) {
                        let bytes = frame(&String::from_utf8_lossy(&body));
                        if output.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    let _ = output.flush().await;
                }
            },
            Some(error) = errors.recv() => {
                if output.write_all(&error).await.is_err() {
                    return;
                }
                let _ = output.flush().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Result<String, String>> {
        let mut buffer = input.to_vec();
        let mut out = Vec::new();
        loop {
            match next_frame(&mut buffer) {
                Frame::Incomplete => return out,
                Frame::Body(b) => out.push(Ok(String::from_utf8(b).unwrap())),
                Frame::Garbage(r) => out.push(Err(r)),
            }
        }
    }

    #[test]
    fn frames_split_on_content_length_and_resynchronise_after_garbage() {
        let input = b"Content-Length: 2\r\n\r\n{}garbage!Content-Length: 3\r\n\r\n[1]";
        let got = frames(input);
        assert_eq!(got[0], Ok("{}".into()));
        assert!(got[1].is_err(), "the garbage is reported");
        assert_eq!(got[2], Ok("[1]".into()));
        assert!(
            frames(b"Content-Length: 10\r\n\r\n{}").is_empty(),
            "waits for the rest of a frame"
        );
    }

    #[test]
    fn only_decodable_json_rpc_passes() {
        assert!(check(br#"{"jsonrpc":"2.0","method":"x","params":{}}"#).is_ok());
        assert!(check(br#"{"jsonrpc":"2.0","id":1,"result":null}"#).is_ok());
        let refused = [
            &br#"{"jsonrpc":2,"#[..],
            br#"{}"#,
            br#"[1,2]"#,
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
            br#"{"jsonrpc":"2.0","method":"x","params":3}"#,
            b"\xff\xfe",
        ];
        for body in refused {
            assert!(check(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            check(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#)
                .unwrap_err()
                .0,
            Value::from(7)
        );
    }
}
