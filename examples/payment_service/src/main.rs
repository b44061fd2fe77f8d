//! A payment service that tells the payer's pages the result of an order.
//!
//! Run (with a gateway on the same RabbitMQ and the payer connected):
//!
//! ```text
//! cargo run -p switchboard-example-payment-service -- \
//!     --amqp amqp://guest:guest@127.0.0.1:5672/%2f --user user-42 --order A-1001 --status PAID
//! ```
//!
//! It publishes one `payment_callback` event to `switchboard.inbound` and
//! exits once RabbitMQ has confirmed it, printing the event's `messageId`.

use serde_json::json;
use switchboard_client::{ClientOptions, SwitchboardClient};

const USAGE: &str = "usage: payment_service [--amqp URL] --user ID --order ID --status STATUS";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut amqp = String::from("amqp://guest:guest@127.0.0.1:5672/%2f");
    let (mut user, mut order, mut status) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--amqp" => amqp = value,
            "--user" => user = Some(value),
            "--order" => order = Some(value),
            "--status" => status = Some(value),
            _ => return Err(USAGE.into()),
        }
    }
    let (Some(user), Some(order), Some(status)) = (user, order, status) else {
        return Err(USAGE.into());
    };

    let options = ClientOptions::default().service_name("payment-service");
    let client = SwitchboardClient::connect(&amqp, options).await?;
    let content = json!({ "orderId": order, "status": status });
    let message_id = client.unicast("payment_callback", &user, content).await?;
    println!("confirmed by RabbitMQ: messageId {message_id}");
    client.close().await;
    Ok(())
}
