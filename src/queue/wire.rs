//! AMQP 0-9-1 frames as bytes: the three frames of a publish, written by
//! hand because every accepted write sends them; any other method through
//! `amq-protocol`'s generator; and incoming frames cut from a read buffer.
//!
//! A frame is a type octet, a channel (u16), a payload size (u32), the
//! payload and the end octet 0xCE (AMQP 0-9-1 section 4.2.3).

use amq_protocol::{
    frame::{AMQPFrame, WriteContext, gen_frame},
    protocol::{AMQPClass, BasicProperties, basic::parse_properties, parse_class},
};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel and size before the payload, and the end octet after it.
pub const FRAME_OVERHEAD: usize = 8;

const BASIC_CLASS: u16 = 60;
const BASIC_PUBLISH: u16 = 40;
/// The only properties a message of svc carries, by their flag bits.
const PROPERTY_CONTENT_TYPE: u16 = 1 << 15;
const PROPERTY_DELIVERY_MODE: u16 = 1 << 12;
const PROPERTY_MESSAGE_ID: u16 = 1 << 7;
const PERSISTENT: u8 = 2;

/// The protocol header that opens a connection.
pub const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// A heartbeat frame.
pub const HEARTBEAT: [u8; FRAME_OVERHEAD] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// A persistent JSON message to publish.
pub struct Publish<'a> {
    pub channel: u16,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub message_id: &'a str,
    pub body: &'a [u8],
}

/// Appends the frames of `publish` to `out`: basic.publish, its content
/// header and the body, cut into frames of at most `frame_max` bytes.
pub fn put_publish(out: &mut Vec<u8>, publish: &Publish<'_>, frame_max: usize) {
    let method = begin_frame(out, FRAME_METHOD, publish.channel);
    out.extend_from_slice(&BASIC_CLASS.to_be_bytes());
    out.extend_from_slice(&BASIC_PUBLISH.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // reserved (ticket)
    put_short_string(out, publish.exchange);
    put_short_string(out, publish.routing_key);
    out.push(u8::from(publish.mandatory)); // bit 0 mandatory, bit 1 immediate
    end_frame(out, method);

    let header = begin_frame(out, FRAME_HEADER, publish.channel);
    out.extend_from_slice(&BASIC_CLASS.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // weight
    out.extend_from_slice(&(publish.body.len() as u64).to_be_bytes());
    let flags = PROPERTY_CONTENT_TYPE | PROPERTY_DELIVERY_MODE | PROPERTY_MESSAGE_ID;
    out.extend_from_slice(&flags.to_be_bytes());
    put_short_string(out, "application/json");
    out.push(PERSISTENT);
    put_short_string(out, publish.message_id);
    end_frame(out, header);

    for chunk in publish.body.chunks(frame_max - FRAME_OVERHEAD) {
        let body = begin_frame(out, FRAME_BODY, publish.channel);
        out.extend_from_slice(chunk);
        end_frame(out, body);
    }
}

/// A method frame for `method` on `channel`.
pub fn method_frame(channel: u16, method: AMQPClass) -> Vec<u8> {
    let frame = AMQPFrame::Method(channel, method);
    gen_frame(&frame)(WriteContext::from(Vec::new()))
        .expect("a method frame always fits in a growable buffer")
        .write
}

/// Begins a frame whose size is filled in by `end_frame`; returns where
/// its payload starts.
fn begin_frame(out: &mut Vec<u8>, kind: u8, channel: u16) -> usize {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.len()
}

fn end_frame(out: &mut Vec<u8>, payload_start: usize) {
    let size = (out.len() - payload_start) as u32;
    out[payload_start - 4..payload_start].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

/// A short string: at most 255 bytes, which every name svc sends is (the
/// topology's names and a UUID); longer ones are cut rather than corrupt
/// the frame.
fn put_short_string(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// A frame received from the broker.
#[derive(Debug)]
pub enum Incoming {
    Method(u16, AMQPClass),
    /// A content header: only its message id matters to a publisher.
    Header {
        channel: u16,
        message_id: Option<String>,
    },
    Body,
    Heartbeat,
}

/// Why bytes from the broker are not AMQP.
#[derive(Debug, thiserror::Error)]
#[error("the broker sent a malformed frame: {0}")]
pub struct MalformedFrame(String);

/// Cuts the first whole frame off `buffer`; `Ok(None)` until one has
/// arrived. Frames over `frame_max` are refused, as the protocol requires.
pub fn take_frame(
    buffer: &mut bytes::BytesMut,
    frame_max: usize,
) -> Result<Option<Incoming>, MalformedFrame> {
    if buffer.len() < 7 {
        return Ok(None);
    }
    let kind = buffer[0];
    let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]) as usize;
    if size + FRAME_OVERHEAD > frame_max {
        return Err(MalformedFrame(format!(
            "a frame of {size} bytes, over the agreed {frame_max}"
        )));
    }
    if buffer.len() < size + FRAME_OVERHEAD {
        buffer.reserve(size + FRAME_OVERHEAD - buffer.len());
        return Ok(None);
    }
    let frame = buffer.split_to(size + FRAME_OVERHEAD);
    if frame[size + 7] != FRAME_END {
        return Err(MalformedFrame("a frame without its end octet".into()));
    }
    let payload = &frame[7..size + 7];
    let incoming = match kind {
        FRAME_METHOD => {
            let (_, method) = parse_class(payload)
                .map_err(|err| MalformedFrame(format!("a method frame ({err})")))?;
            Incoming::Method(channel, method)
        }
        FRAME_HEADER => {
            // Class (2), weight (2) and body size (8) before the properties.
            let properties = payload
                .get(12..)
                .ok_or_else(|| MalformedFrame("a short content header".into()))?;
            let (_, properties): (_, BasicProperties) = parse_properties(properties)
                .map_err(|err| MalformedFrame(format!("a content header ({err})")))?;
            Incoming::Header {
                channel,
                message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            }
        }
        FRAME_BODY => Incoming::Body,
        FRAME_HEARTBEAT => Incoming::Heartbeat,
        other => return Err(MalformedFrame(format!("a frame of unknown type {other}"))),
    };
    Ok(Some(incoming))
}

#[cfg(test)]
mod tests {
    use amq_protocol::{frame::parse_frame, protocol::basic};

    use super::*;

    fn publish(body: &[u8]) -> Publish<'_> {
        Publish {
            channel: 3,
            exchange: "svc.data",
            routing_key: "data.ingest",
            mandatory: true,
            message_id: "0190b3c4-2f6e-7c3a-9d1e-5a4b3c2d1e0f",
            body,
        }
    }

    /// Every frame of `bytes`, parsed by amq-protocol's own parser.
    fn parsed(mut bytes: &[u8]) -> Vec<AMQPFrame> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (rest, frame) = parse_frame(bytes).expect("a valid frame");
            frames.push(frame);
            bytes = rest;
        }
        frames
    }

    #[test]
    fn a_publish_is_what_the_reference_parser_reads() {
        let mut out = Vec::new();
        put_publish(&mut out, &publish(br#"{"value":"x"}"#), 131_072);
        let frames = parsed(&out);
        assert_eq!(frames.len(), 3);
        let AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Publish(method))) = &frames[0]
        else {
            panic!("not a basic.publish: {:?}", frames[0]);
        };
        assert_eq!(method.exchange.as_str(), "svc.data");
        assert_eq!(method.routing_key.as_str(), "data.ingest");
        assert!(method.mandatory);
        assert!(!method.immediate);
        let AMQPFrame::Header(3, header) = &frames[1] else {
            panic!("not a content header: {:?}", frames[1]);
        };
        assert_eq!(header.class_id, 60);
        assert_eq!(header.body_size, 13);
        let properties = &header.properties;
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(
            properties.content_type().as_ref().map(|t| t.as_str()),
            Some("application/json")
        );
        assert_eq!(
            properties.message_id().as_ref().map(|t| t.as_str()),
            Some("0190b3c4-2f6e-7c3a-9d1e-5a4b3c2d1e0f")
        );
        assert_eq!(frames[2], AMQPFrame::Body(3, br#"{"value":"x"}"#.to_vec()));
    }

    #[test]
    fn a_body_longer_than_a_frame_is_cut_into_frames_that_join_up() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        put_publish(&mut out, &publish(&body), 4096);
        let frames = parsed(&out);
        let bodies: Vec<&[u8]> = frames
            .iter()
            .filter_map(|frame| match frame {
                AMQPFrame::Body(3, chunk) => Some(chunk.as_slice()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies.len(), 3);
        assert!(
            bodies
                .iter()
                .all(|chunk| chunk.len() <= 4096 - FRAME_OVERHEAD)
        );
        assert_eq!(bodies.concat(), body);
    }

    #[test]
    fn frames_are_cut_off_a_buffer_one_by_one_once_whole() {
        let mut out = method_frame(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 42,
                multiple: true,
            })),
        );
        out.extend_from_slice(&HEARTBEAT);
        let mut buffer = bytes::BytesMut::new();
        buffer.extend_from_slice(&out[..5]);
        assert!(take_frame(&mut buffer, 4096).unwrap().is_none());
        buffer.extend_from_slice(&out[5..]);
        match take_frame(&mut buffer, 4096).unwrap() {
            Some(Incoming::Method(
                2,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 42,
                    multiple: true,
                })),
            )) => {}
            other => panic!("not the ack: {other:?}"),
        }
        assert!(matches!(
            take_frame(&mut buffer, 4096).unwrap(),
            Some(Incoming::Heartbeat)
        ));
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_content_header_gives_its_message_id() {
        let mut out = Vec::new();
        put_publish(&mut out, &publish(b"{}"), 4096);
        let mut buffer = bytes::BytesMut::from(&out[..]);
        take_frame(&mut buffer, 4096).unwrap();
        match take_frame(&mut buffer, 4096).unwrap() {
            Some(Incoming::Header {
                channel: 3,
                message_id: Some(id),
            }) => assert_eq!(id, "0190b3c4-2f6e-7c3a-9d1e-5a4b3c2d1e0f"),
            other => panic!("not the header: {other:?}"),
        }
        assert!(matches!(
            take_frame(&mut buffer, 4096).unwrap(),
            Some(Incoming::Body)
        ));
    }

    #[test]
    fn an_oversized_or_unterminated_frame_is_refused() {
        let mut buffer = bytes::BytesMut::from(&[FRAME_BODY, 0, 1, 0, 1, 0, 0][..]);
        assert!(take_frame(&mut buffer, 4096).is_err());
        let mut buffer = bytes::BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(take_frame(&mut buffer, 4096).is_err());
    }
}
