import LengthEchoCore
import NIOCore

/// Application writes waiting to be encrypted: appended by `write`, marked by `flush`, taken in order.
struct PendingWrites {
    private(set) var items: [(data: ByteBuffer, promise: EventLoopPromise<Void>?)] = []
    /// How many of `items`, from the front, have been flushed.
    private(set) var flushed = 0

    var hasFlushed: Bool { self.flushed > 0 }

    mutating func append(_ data: ByteBuffer, promise: EventLoopPromise<Void>?) {
        self.items.append((data, promise))
    }

    mutating func markFlushed() {
        self.flushed = self.items.count
    }

    /// Drops the first `count` items, already taken care of.
    mutating func removeFirst(_ count: Int) {
        if count == self.items.count {
            self.items.removeAll(keepingCapacity: true)
        } else {
            self.items.removeFirst(count)
        }
        self.flushed = max(0, self.flushed - count)
    }

    /// Fails every waiting write with `error`.
    mutating func failAll(_ error: any Error) {
        guard !self.items.isEmpty else { return }
        let items = self.items
        self.items = []
        self.flushed = 0
        for item in items { item.promise?.fail(error) }
    }
}

extension TLSHandler {
    // MARK: write and flush

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let data = self.unwrapOutboundIn(data)
        switch self.state {
        case .idle where data.readableBytes == 0 && self.writes.items.isEmpty,
            .handshaking where data.readableBytes == 0 && self.writes.items.isEmpty:
            // Nothing precedes it, and it carries nothing: done (a close after "the last replies" must not
            // wait for a handshake that may never come).
            promise?.succeed()
        case .idle, .handshaking, .active:
            self.writes.append(data, promise: promise)
        case .outputClosed, .closing, .refusing:
            promise?.fail(ChannelError.outputClosed)
        case .closed(let failure):
            promise?.fail(failure ?? ChannelError.ioOnClosedChannel)
        }
    }

    package func flush(context: ChannelHandlerContext) {
        self.writes.markFlushed()
        if case .active = self.state {
            self.encryptFlushedWrites(context: context)
        }
        // While handshaking the mark is remembered: the flushed writes go when the handshake completes.
    }

    /// Encrypts the flushed writes, in order, and sends the result as one write. A write OpenSSL cannot
    /// take before it reads from the peer (a TLS 1.2 renegotiation, refused but answered) stays first in
    /// line and is retried after the next read; a write that fails fails the connection and every write
    /// after it.
    ///
    /// - Parameter soon: within a read, the records may wait for the end of the read burst (`sendOutput`).
    func encryptFlushedWrites(context: ChannelHandlerContext, soon: Bool = false) {
        var promises: [EventLoopPromise<Void>] = []
        var done = 0
        if self.writes.hasFlushed {
            // The items are read in place, never copied out: a second reference to the array would make the
            // removal below copy it, an allocation per flush.
            if let scratch = self.buffers?.ciphertext {
                // Records are written straight into the loop's reusable buffer.
                var size = 0
                for index in 0..<self.writes.flushed { size += self.writes.items[index].data.readableBytes + 32 }
                self.connection.offerOutputBuffer { scratch.take(capacity: size) }
            }
            writing: while done < self.writes.flushed {
                let item = self.writes.items[done]
                switch self.connection.write(item.data) {
                case .done:
                    if let promise = item.promise { promises.append(promise) }
                    done += 1
                case .wantRead:
                    break writing
                case .closed:
                    self.writes.removeFirst(done)
                    self.sendOutput(context: context, promises: promises)
                    self.fail(TLSError(.protocolError, "TLS error: the peer closed the TLS session"), context: context)
                    return
                case .failed(let entries):
                    self.writes.removeFirst(done)
                    self.sendOutput(context: context, promises: promises)
                    self.fail(self.connection.explainFailure(entries), context: context)
                    return
                }
            }
            self.writes.removeFirst(done)
        }
        self.sendOutput(context: context, promises: promises, soon: soon)
        self.connection.releaseIdleBuffers()
    }

    /// Sends what OpenSSL has produced for the peer as one write, which completes `promises`. With nothing
    /// to send but promises waiting, an empty write carries them, so they still complete only after every
    /// write before them is on the wire.
    ///
    /// - Parameter soon: during a read, wait for the end of the read burst (`channelReadComplete`), so that a
    ///   handshake flight or a ticket leaves in the same write as the replies to what was read with it: one
    ///   write per burst. Any later send takes what waited, and its promises, first.
    func sendOutput(context: ChannelHandlerContext, promises: [EventLoopPromise<Void>] = [], soon: Bool = false) {
        if soon && self.inRead {
            self.deferredPromises.append(contentsOf: promises)
            return
        }
        var promises = promises
        if !self.deferredPromises.isEmpty {
            promises = self.deferredPromises + promises
            self.deferredPromises.removeAll()
        }
        let promise: EventLoopPromise<Void>?
        switch promises.count {
        case 0: promise = nil
        case 1: promise = promises[0]
        default:
            let combined = context.eventLoop.makePromise(of: Void.self)
            for waiter in promises { combined.futureResult.cascade(to: waiter) }
            promise = combined
        }
        guard self.connection.outputPending > 0 else {
            if let promise {
                context.writeAndFlush(self.wrapOutboundOut(self.buffers?.empty ?? ByteBuffer()), promise: promise)
            }
            return
        }
        // Taken out before the write: completing a promise can re-enter this handler and write again.
        let ciphertext = self.connection.takeOutput()
        context.writeAndFlush(self.wrapOutboundOut(ciphertext), promise: promise)
        self.buffers?.ciphertext.giveBack(ciphertext)
    }

    // MARK: close

    package func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch (mode, self.state) {
        case (.all, .active):
            // Unflushed writes never leave; then close_notify, and a bounded wait for the peer's.
            self.writes.failAll(ChannelError.ioOnClosedChannel)
            self.beginClosing(context: context, promise: promise)
            self.sendCloseNotify(context: context) {
                guard case .closing = self.state else { return }
                if self.inputClosed {
                    self.closeNow(context: context)
                } else {
                    context.close(mode: .output, promise: nil)  // the peer sees EOF too
                }
            }
        case (.all, .outputClosed):
            if self.inputClosed {
                self.state = .closed(failure: nil)
                context.close(promise: promise)
            } else {
                self.beginClosing(context: context, promise: promise)
            }
        case (.all, .closing(let timer, let existing)):
            if let promise {
                if let existing {
                    existing.futureResult.cascade(to: promise)
                } else {
                    self.state = .closing(timer: timer, promise: promise)
                }
            }
        case (.output, .active):
            // What was flushed goes first, then close_notify, then the TCP write side.
            self.encryptFlushedWrites(context: context)
            self.writes.failAll(ChannelError.outputClosed)
            self.state = .outputClosed
            self.sendCloseNotify(context: context) {
                context.close(mode: .output, promise: promise)
            }
        case (.output, .outputClosed), (.output, .closing), (.output, .refusing):
            promise?.succeed()
        case (_, .idle(let handshakePromise)):
            handshakePromise?.fail(ChannelError.ioOnClosedChannel)
            self.closeBeforeActive(context: context, promise: promise)
        case (_, .handshaking(let handshake)) where mode != .input:
            handshake.timer.cancel()
            handshake.promise?.fail(ChannelError.ioOnClosedChannel)
            self.closeBeforeActive(context: context, promise: promise)
        case (.all, .refusing(let linger)):
            linger.cancel()
            self.state = .closed(failure: nil)
            context.close(promise: promise)
        default:
            context.close(mode: mode, promise: promise)
        }
    }

    private func closeBeforeActive(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        self.writes.failAll(ChannelError.ioOnClosedChannel)
        self.state = .closed(failure: nil)
        context.close(promise: promise)
    }

    /// Enters `.closing` with its timer: however the peer behaves, the connection closes within the
    /// shutdown timeout.
    private func beginClosing(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.shutdownTimeout) {
            self.closeNow(context: context)
        }
        self.state = .closing(timer: timer, promise: promise)
    }

    /// Ends `.closing`: the promise goes to the channel's own close, which completes it.
    func closeNow(context: ChannelHandlerContext) {
        guard case .closing(let timer, let promise) = self.state else { return }
        timer.cancel()
        self.state = .closed(failure: nil)
        context.close(promise: promise)
    }

    private func sendCloseNotify(context: ChannelHandlerContext, then: @escaping () -> Void) {
        self.connection.shutdown()
        let written = context.eventLoop.makePromise(of: Void.self)
        self.sendOutput(context: context, promises: [written])
        written.futureResult.assumeIsolated().whenComplete { _ in then() }
    }
}
