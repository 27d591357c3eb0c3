// pushcenter-client: a STOMP-over-WebSocket client for pushcenter clusters, on top of
// @stomp/stompjs. It finds a node through the registry, reconnects through the registry
// with backoff when the node goes away, restores subscriptions, and stops (instead of
// retrying forever) when the node refuses its token.
import { Client } from '@stomp/stompjs';
import type { IFrame, IMessage, IStompSocket, StompHeaders, StompSubscription } from '@stomp/stompjs';

export type { IMessage, StompHeaders } from '@stomp/stompjs';

export type State = 'connecting' | 'connected' | 'reconnecting' | 'stopped';

/** Where the client is; every change is reported to `onState` listeners. */
export interface Status {
  state: State;
  /** The node the client is connected (or connecting) to. */
  nodeId: string | null;
  /** The `session` header of the last CONNECTED frame (`<node>-<n>`). */
  sessionId: string | null;
  /** The WebSocket URL of the current or last attempt. */
  url: string | null;
  /** Failed attempts since the last successful connect. */
  attempt: number;
  /** Why the last connection ended, or why the client stopped. */
  reason: string | null;
}

export interface Backoff {
  /** First retry delay (default 500 ms). */
  initialMs: number;
  /** Cap (default 15 s). */
  maxMs: number;
  /** Growth per failed attempt (default 2). */
  factor: number;
  /** Fraction of each delay that is random, 0..1 (default 0.5). */
  jitter: number;
}

export interface ConnectOptions {
  /** The registry (or any node) base URL; the client asks `<registryUrl>/v1/connect`. */
  registryUrl?: string;
  /** A fixed node WebSocket URL (`ws://host:port/ws`), used when there is no registry. */
  brokerUrl?: string;
  /** A JWT sent as `passcode` on CONNECT (docs/security.md). */
  token?: string;
  /** Passed to the registry (`?user=`) so one user's connections land on one node. */
  user?: string;
  /**
   * Called when the node refuses the token (`unauthorized: ...`). Return a fresh token
   * to reconnect with it; return nothing to stop.
   */
  refreshToken?: (reason: string) => string | null | undefined | Promise<string | null | undefined>;
  backoff?: Partial<Backoff>;
  /** STOMP heart-beats both ways (default 10 s; 0 disables). */
  heartbeatMs?: number;
  /** Discovery plus WebSocket plus CONNECT must finish within this (default 10 s). */
  connectTimeoutMs?: number;
  /** Extra CONNECT headers. */
  connectHeaders?: StompHeaders;
  /** For runtimes without a global WebSocket (Node < 22: pass `ws`). */
  webSocketFactory?: (url: string, protocols: string[]) => IStompSocket;
  /** For runtimes without a global fetch, and for tests. */
  fetch?: typeof fetch;
  /** For tests: the jitter's randomness and the timers. */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  debug?: (message: string) => void;
  /**
   * Resume every subscription after a reconnect from the last message it saw (default
   * true): the node replays what was published meanwhile, once, in order.
   */
  resume?: boolean;
  /** A resume could not replay everything (older than the cluster keeps). */
  onResumeLost?: (subscription: { id: string; destination: string }, streams: string[]) => void;
}

export type MessageHandler = (message: IMessage) => void;

/** What a request handler returns: a body, or a body with headers. */
export type Answer = string | { body?: string; headers?: StompHeaders };
export type RequestHandler = (message: IMessage) => Answer | Promise<Answer>;

export interface Subscription {
  readonly id: string;
  readonly destination: string;
  unsubscribe(): void;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 15_000, factor: 2, jitter: 0.5 };

/** The delay before retry number `attempt` (1-based): exponential, capped, jittered. */
export function backoffDelay(attempt: number, b: Backoff, random: () => number = Math.random): number {
  const n = Math.max(1, attempt);
  const base = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, n - 1));
  const jitter = Math.min(1, Math.max(0, b.jitter));
  return Math.round(base * (1 - jitter + jitter * random()));
}

/** Refusals that a reconnect cannot cure: the client stops instead of retrying. */
export function fatalReason(errorMessage: string | undefined): 'unauthorized' | 'forbidden' | null {
  if (!errorMessage) return null;
  if (errorMessage.startsWith('unauthorized')) return 'unauthorized';
  if (errorMessage.startsWith('forbidden')) return 'forbidden';
  return null;
}

/** The node of a session id `<node>-<boot>-<n>` (`<boot>`: 12 hex digits, fresh at
 * every start of the node; ids of older nodes are `<node>-<n>`). */
export function nodeOfSession(session: string | undefined): string | null {
  if (!session) return null;
  const i = session.lastIndexOf('-');
  if (i <= 0) return null;
  const rest = session.slice(0, i);
  const boot = rest.match(/^(.+)-[0-9a-f]{12}$/);
  return boot ? boot[1] : rest;
}

/** `<registry>/v1/connect` with the user hint and the nodes to stay away from. */
export function discoveryUrl(registryUrl: string, user?: string, avoid: string[] = []): string {
  const params = new URLSearchParams();
  if (user) params.set('user', user);
  if (avoid.length) params.set('avoid', avoid.join(','));
  const q = params.toString();
  return registryUrl.replace(/\/+$/, '') + '/v1/connect' + (q ? '?' + q : '');
}

/** WebSocket close code a draining node sends: reconnect at once, elsewhere. */
const CLOSE_RESTARTING = 1012;

interface Sub {
  id: string;
  destination: string;
  headers: StompHeaders;
  handler: MessageHandler;
  live: StompSubscription | null;
  /** Last offset seen per stream (from message ids `<stream>-<offset>`). */
  positions: Map<string, number>;
  /** Whether the node told where this subscription started (its first RECEIPT). */
  positioned: boolean;
}

/** `<stream>-<offset>` → [stream, offset]. */
export function parseMessageId(id: string | undefined): [string, number] | null {
  if (!id) return null;
  const i = id.lastIndexOf('-');
  if (i <= 0) return null;
  const offset = Number(id.slice(i + 1));
  return Number.isSafeInteger(offset) && offset >= 0 ? [id.slice(0, i), offset] : null;
}

/** Keeps the highest offset per stream. */
export function advance(positions: Map<string, number>, id: string | undefined): void {
  const p = parseMessageId(id);
  if (p && (positions.get(p[0]) ?? -1) < p[1]) positions.set(p[0], p[1]);
}

/** A `resume-from` header value. */
export function resumeHeader(positions: Map<string, number>): string {
  return [...positions].map(([s, o]) => `${s}-${o}`).join(',');
}

export class PushClient {
  private readonly opts: ConnectOptions;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (handle: unknown) => void;
  private token: string | undefined;
  private status: Status = {
    state: 'connecting',
    nodeId: null,
    sessionId: null,
    url: null,
    attempt: 0,
    reason: null,
  };
  private readonly listeners = new Set<(s: Status) => void>();
  private readonly subs = new Map<string, Sub>();
  private nextSub = 0;
  private nextReceipt = 0;
  private readonly receipts = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();
  private stomp: Client | null = null;
  /** Bumped per attempt, so late events of an abandoned attempt are ignored. */
  private generation = 0;
  private timer: unknown = null;
  /** The node this client lost last; the registry is asked for another one. */
  private avoid: string | null = null;
  /** An ERROR frame that ends this attempt (read when the socket closes). */
  private pendingError: string | null = null;
  /** Its `reconnect` header: an operator's `false` stops the client, `true` comes back at once. */
  private pendingReconnect: string | null = null;
  /** Whether the last refusal was met with a fresh token already. */
  private refreshedSinceConnect = false;

  constructor(opts: ConnectOptions) {
    if (!opts.registryUrl && !opts.brokerUrl) {
      throw new Error('pushcenter-client: registryUrl or brokerUrl is required');
    }
    this.opts = opts;
    this.backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.random = opts.random ?? Math.random;
    this.setTimer = opts.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = opts.clearTimeout ?? (h => clearTimeout(h as ReturnType<typeof setTimeout>));
    this.token = opts.token;
  }

  /** A snapshot of the current status. */
  get state(): Status {
    return { ...this.status };
  }

  /** Calls `listener` on every status change (and once now); returns a remover. */
  onState(listener: (s: Status) => void): () => void {
    this.listeners.add(listener);
    listener(this.state);
    return () => this.listeners.delete(listener);
  }

  /** Subscribes now if connected, and again after every reconnect. */
  subscribe(destination: string, handler: MessageHandler, headers: StompHeaders = {}): Subscription {
    const id = headers.id ?? `sub-${this.nextSub++}`;
    const sub: Sub = {
      id,
      destination,
      headers: { ...headers, id },
      handler,
      live: null,
      positions: new Map(),
      positioned: false,
    };
    this.subs.set(id, sub);
    if (this.status.state === 'connected') this.attach(sub);
    return {
      id,
      destination,
      unsubscribe: () => {
        if (this.subs.get(id) !== sub) return;
        this.subs.delete(id);
        if (sub.live && this.status.state === 'connected') sub.live.unsubscribe();
        sub.live = null;
      },
    };
  }

  /**
   * Answers requests (messages with `correlation-id` and `reply-to`) arriving on
   * `destination` with what `handler` returns. A handler that throws is answered with
   * an empty body and a `reply-error` header carrying the error's message.
   */
  onRequest(destination: string, handler: RequestHandler, headers: StompHeaders = {}): Subscription {
    return this.subscribe(
      destination,
      message => {
        const correlationId = message.headers['correlation-id'];
        const replyTo = message.headers['reply-to'];
        if (!correlationId || !replyTo) return;
        const reply = (answer: Answer, extra: StompHeaders = {}) => {
          const a = typeof answer === 'string' ? { body: answer } : answer;
          const h: StompHeaders = { ...a.headers, ...extra, 'correlation-id': correlationId };
          // The connection may have gone meanwhile: the caller then times out.
          if (this.stomp && this.status.state === 'connected') {
            this.stomp.publish({ destination: replyTo, body: a.body ?? '', headers: h });
          }
        };
        Promise.resolve()
          .then(() => handler(message))
          .then(
            answer => reply(answer),
            (e: unknown) => reply('', { 'reply-error': errorText(e) }),
          );
      },
      headers,
    );
  }

  /**
   * SEND to `destination`; resolves when the node confirms it (RECEIPT), rejects when
   * not connected, when the node answers with ERROR, or when the connection drops first.
   */
  publish(destination: string, body = '', headers: StompHeaders = {}): Promise<void> {
    const stomp = this.stomp;
    if (!stomp || this.status.state !== 'connected') {
      return Promise.reject(new Error('not connected'));
    }
    const receipt = `r-${this.nextReceipt++}`;
    return new Promise((resolve, reject) => {
      this.receipts.set(receipt, { resolve, reject });
      stomp.watchForReceipt(receipt, () => {
        this.receipts.delete(receipt);
        resolve();
      });
      stomp.publish({ destination, body, headers: { ...headers, receipt } });
    });
  }

  /**
   * Replaces the token: sent to the node now (SEND to `/session/token`, so the
   * connection outlives the old token's expiry) and used for every later connect.
   */
  setToken(token: string): Promise<void> {
    this.token = token;
    if (this.status.state !== 'connected') return Promise.resolve();
    return this.publish('/session/token', '', { passcode: token });
  }

  /** Disconnects and stops reconnecting. */
  async stop(): Promise<void> {
    this.cancelTimer();
    this.generation++;
    const stomp = this.stomp;
    this.stomp = null;
    this.setStatus({ state: 'stopped', reason: 'stopped' });
    this.failReceipts('stopped');
    if (stomp) await stomp.deactivate();
  }

  /** Starts connecting (the `connect()` function does this). */
  start(): this {
    void this.attempt();
    return this;
  }

  private setStatus(change: Partial<Status>): void {
    this.status = { ...this.status, ...change };
    const snapshot = this.state;
    for (const l of this.listeners) {
      try {
        l(snapshot);
      } catch (e) {
        this.debug(`state listener threw: ${errorText(e)}`);
      }
    }
  }

  private debug(message: string): void {
    this.opts.debug?.(message);
  }

  private cancelTimer(): void {
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
  }

  private failReceipts(why: string): void {
    for (const { reject } of this.receipts.values()) reject(new Error(why));
    this.receipts.clear();
  }

  private attach(sub: Sub): void {
    const stomp = this.stomp;
    if (!stomp) return;
    const receipt = `s-${this.nextReceipt++}`;
    const headers: StompHeaders = { ...sub.headers, receipt };
    // Resume where this subscription left off (docs/delivery.md); the first time, the
    // RECEIPT says where it starts.
    const resuming = this.opts.resume !== false && sub.positioned;
    if (resuming) headers['resume-from'] = resumeHeader(sub.positions);
    stomp.watchForReceipt(receipt, frame => {
      if (!resuming) {
        for (const id of (frame.headers['position'] ?? '').split(',')) advance(sub.positions, id);
        sub.positioned = true;
      } else if (frame.headers['resume'] === 'lost') {
        const streams = (frame.headers['resume-lost'] ?? '').split(',').filter(Boolean);
        this.debug(`resume of ${sub.destination} lost streams ${streams.join(',')}`);
        this.opts.onResumeLost?.({ id: sub.id, destination: sub.destination }, streams);
      }
    });
    sub.live = stomp.subscribe(
      sub.destination,
      m => {
        advance(sub.positions, m.headers['message-id']);
        sub.handler(m);
      },
      headers,
    );
  }

  private async attempt(): Promise<void> {
    const gen = ++this.generation;
    this.timer = null;
    this.pendingError = null;
    const first = this.status.nodeId === null && this.status.attempt === 0 && this.status.reason === null;
    this.setStatus({ state: first ? 'connecting' : 'reconnecting' });

    let url: string;
    let nodeId: string | null = null;
    if (this.opts.registryUrl) {
      try {
        const found = await this.discover();
        url = found.url;
        nodeId = found.nodeId;
      } catch (e) {
        if (gen !== this.generation) return;
        this.retry(`discovery: ${errorText(e)}`);
        return;
      }
      if (gen !== this.generation) return;
    } else {
      url = this.opts.brokerUrl as string;
    }
    this.setStatus({ url, nodeId });
    this.debug(`connecting to ${nodeId ?? url}`);

    const heartbeat = this.opts.heartbeatMs ?? 10_000;
    const headers: StompHeaders = { ...this.opts.connectHeaders };
    if (this.token) headers.passcode = this.token;
    // The node then tells every subscription's position now and then, so partitions
    // that never carry a subscription's messages do not hold its position back.
    if (this.opts.resume !== false) headers['position-updates'] = 'on';
    const factory = this.opts.webSocketFactory;
    const stomp = new Client({
      ...(factory
        ? { webSocketFactory: () => factory(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']) }
        : { brokerURL: url }),
      connectHeaders: headers,
      // Reconnects go through the registry, so stompjs must not retry on its own.
      reconnectDelay: 0,
      connectionTimeout: this.opts.connectTimeoutMs ?? 10_000,
      heartbeatIncoming: heartbeat,
      heartbeatOutgoing: heartbeat,
      debug: m => this.debug(m),
    });
    this.stomp = stomp;
    stomp.onUnhandledReceipt = (frame: IFrame) => {
      if (gen !== this.generation || frame.headers['receipt-id'] !== 'position') return;
      const sub = this.subs.get(frame.headers['subscription'] ?? '');
      if (!sub || !sub.positioned) return;
      for (const id of (frame.headers['position'] ?? '').split(',')) advance(sub.positions, id);
    };
    stomp.onConnect = (frame: IFrame) => {
      if (gen !== this.generation) return;
      const sessionId = frame.headers['session'] ?? null;
      this.avoid = null;
      this.refreshedSinceConnect = false;
      this.setStatus({
        state: 'connected',
        nodeId: nodeId ?? nodeOfSession(sessionId ?? undefined),
        sessionId,
        attempt: 0,
        reason: null,
      });
      for (const sub of this.subs.values()) this.attach(sub);
    };
    stomp.onStompError = (frame: IFrame) => {
      if (gen !== this.generation) return;
      this.pendingError = frame.headers['message'] ?? 'ERROR without a message';
      this.pendingReconnect = frame.headers['reconnect'] ?? null;
      this.debug(`ERROR: ${this.pendingError}`);
    };
    stomp.onWebSocketClose = (evt: { code?: number; reason?: string }) => {
      if (gen !== this.generation) return;
      void this.closed(stomp, evt.code ?? 1006);
    };
    stomp.activate();
  }

  private async discover(): Promise<{ url: string; nodeId: string | null }> {
    const f = this.opts.fetch ?? fetch;
    const avoid = this.avoid ? [this.avoid] : [];
    const ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    const t = this.setTimer(() => ctrl?.abort(), this.opts.connectTimeoutMs ?? 10_000);
    try {
      const res = await f(discoveryUrl(this.opts.registryUrl as string, this.opts.user, avoid), {
        signal: ctrl?.signal,
        cache: 'no-store',
      });
      const text = await res.text();
      let body: { ws_url?: unknown; node_id?: unknown; error?: unknown } = {};
      try {
        body = JSON.parse(text);
      } catch {
        throw new Error(`registry answered ${res.status} with no JSON`);
      }
      if (!res.ok) throw new Error(`registry answered ${res.status}: ${String(body.error ?? text)}`);
      if (typeof body.ws_url !== 'string' || !body.ws_url) throw new Error('registry answer has no ws_url');
      return { url: body.ws_url, nodeId: typeof body.node_id === 'string' ? body.node_id : null };
    } finally {
      this.clearTimer(t);
    }
  }

  private async closed(stomp: Client, code: number): Promise<void> {
    const gen = ++this.generation;
    for (const sub of this.subs.values()) sub.live = null;
    this.stomp = null;
    this.failReceipts('connection lost');
    void stomp.deactivate();
    const error = this.pendingError;
    const reconnect = this.pendingReconnect;
    this.pendingError = null;
    this.pendingReconnect = null;
    // Connected or not, that node failed us: ask the registry for another one.
    if (this.status.nodeId) this.avoid = this.status.nodeId;

    // The operator closed this session (POST /v1/disconnect) and said whether to return.
    if (reconnect === 'false') {
      this.setStatus({ state: 'stopped', reason: error });
      return;
    }
    const fatal = fatalReason(error ?? undefined);
    if (fatal === 'unauthorized' && this.opts.refreshToken && !this.refreshedSinceConnect) {
      this.setStatus({ state: 'reconnecting', reason: error });
      let fresh: string | null | undefined;
      try {
        fresh = await this.opts.refreshToken(error as string);
      } catch (e) {
        this.debug(`refreshToken threw: ${errorText(e)}`);
      }
      if (gen !== this.generation) return;
      if (fresh) {
        this.token = fresh;
        this.refreshedSinceConnect = true;
        // The node was fine; only the token was not.
        this.avoid = null;
        void this.attempt();
        return;
      }
    }
    if (fatal) {
      this.setStatus({ state: 'stopped', reason: error });
      return;
    }
    const reason = error ?? `connection closed (${code})`;
    if (code === CLOSE_RESTARTING || reconnect === 'true') {
      // The node drains: go elsewhere now, spread over the first backoff step.
      this.setStatus({ state: 'reconnecting', reason });
      this.timer = this.setTimer(() => void this.attempt(), Math.round(this.random() * this.backoff.initialMs));
      return;
    }
    this.retry(reason);
  }

  private retry(reason: string): void {
    const attempt = this.status.attempt + 1;
    const delay = backoffDelay(attempt, this.backoff, this.random);
    this.debug(`retry ${attempt} in ${delay} ms: ${reason}`);
    this.setStatus({ state: 'reconnecting', attempt, reason });
    this.timer = this.setTimer(() => void this.attempt(), delay);
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Creates a client and starts connecting. */
export function connect(opts: ConnectOptions): PushClient {
  return new PushClient(opts).start();
}
