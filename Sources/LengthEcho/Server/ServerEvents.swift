/// Sent down every open connection when the server starts draining: answer what has arrived, then close.
struct DrainEvent: Sendable {}
