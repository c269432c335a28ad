// `import LengthEcho` is all a library user needs: the server, the client, their configurations, and the types
// those take from the core (framing, errors, address policy) and the TLS layer (contexts, errors, sessions).
// Everything else in those modules is `package`: this package's own.
@_exported import LengthEchoCore
@_exported import LengthEchoTLS
