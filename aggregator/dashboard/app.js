// The dashboard page: sign-in, the six views, reading the JSON API, the
// live stream, and rendering. Money math, delta application and
// formatting are in model.js; this file is the DOM, network and clock
// around it. The contract with the server is API.md.
//
// How live data stays exact: every dataset remembers the data version it
// was read at, and a stream delta is added only to datasets read at a
// lower version. The server subscribes a stream before it sends `hello`,
// so a dataset read at or above the `hello` version misses nothing; one
// read below it is read again. Deltas that arrive while a dataset is
// being read are kept and applied to the new answer, by the same version
// rule, once it is in.

import * as model from '/assets/model.js';

// === Settings ===

/** Zones offered after the session's own, in this order. */
const TIME_ZONES = [
  'UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York', 'America/Los_Angeles',
  'Asia/Kolkata', 'Asia/Tokyo', 'Australia/Sydney',
];
const ROUTES = ['overview', 'affiliates', 'campaigns', 'series', 'alerts', 'health'];
const PERIOD_LABELS = {
  today: 'Today', yesterday: 'Yesterday', '7d': 'Last 7 days', '30d': 'Last 30 days', month: 'This month',
};
/** Periods short enough for minute buckets: the server caps a series at 3,000 buckets. */
const MINUTE_PERIODS = ['today', 'yesterday'];

const TICK_MS = 1_000;
const HEALTH_INTERVAL_MS = 5_000;
/** Alerts are read again when the version moves, but not more often than this. */
const ALERTS_INTERVAL_MS = 2_000;
/**
 * And at least this often: an edge falling silent is a finding that comes
 * with time, not with a new version (the server keeps alerts 5 s).
 */
const ALERTS_INTERVAL_MAX_MS = 5_000;
/** Newest data older than this is called stale. */
const STALE_AFTER_MS = 10_000;
/** A read that failed (not for sign-in) is tried again after this. */
const RETRY_AFTER_MS = 5_000;
/**
 * Deltas kept while a read is under way. Four batches a second from a
 * dozen edges fill it in minutes; a read that slow is started again
 * instead (which empties the buffer).
 */
const DELTA_BUFFER_MAX = 10_000;

/** Expected table row height; the real one is measured from the first row drawn. */
const ROW_HEIGHT_PX = 28;
/** Rows drawn beyond each edge of the visible ones, so a quick scroll shows no gap. */
const OVERSCAN_ROWS = 12;

const TILES = [
  { metric: 'impressions', label: 'Impressions' },
  { metric: 'clicks', label: 'Clicks' },
  { metric: 'conversions', label: 'Conversions' },
  { metric: 'conversion_rate', label: 'Conversion rate' },
  { metric: 'revenue', label: 'Revenue' },
  { metric: 'payable', label: 'Payable' },
  { metric: 'margin', label: 'Margin' },
  { metric: 'epc', label: 'EPC' },
  { metric: 'flagged', label: 'Flagged (held)' },
];

const COLUMN_LABELS = {
  impressions: 'Impressions', clicks: 'Clicks', conversions: 'Conversions', conversion_rate: 'Conv. rate',
  revenue: 'Revenue', payable: 'Payable', margin: 'Margin', epc: 'EPC', flagged: 'Flagged',
};

// === State ===

/** The signed-in session and its model context; null while signed out. */
let session = null;
let ctx = null;

/** What the viewer chose. */
const choice = {
  period: 'today',
  tz: 'UTC',
  route: 'overview',
  seriesMetric: 'clicks',
  seriesCurrency: null,
  granularity: '',
};

/** Each dataset as last read and since moved on by deltas; null until read. */
const data = { overview: null, affiliate: null, campaign: null, series: null, alerts: null, health: null };

/** The abort handle of each dataset's read under way. */
const reads = new Map();
/** Deltas received while a delta-fed dataset was being read. */
const deltaBuffer = [];
/** Datasets whose last read failed, read again by the retry timer. */
const failed = new Map();

/** Server time is taken from the stream and health answers, so a skewed client clock does not skew ages. */
const clock = { offsetMs: 0, lastAppliedMs: null };

const stream = {
  source: null,
  /** "connecting" (first attempt), "live", "reconnecting". */
  state: 'connecting',
  /** The `hello` version of the open stream; null while none is open. */
  helloVersion: null,
  /** Whether a stream was ever open in this session (a later `hello` is a reconnection). */
  openedBefore: false,
  attemptIdx: 0,
  retryAtMs: null,
  retryTimer: null,
  /** The `hello` version each dataset was last read again for (see readDataset). */
  rereadAt: new Map(),
};

const timers = { tick: null, health: null, retry: null };
let alertsReadAtMs = 0;
/** The local date (in the chosen zone) when the data was read: a new day moves the periods. */
let readDate = null;

// === Datasets ===

function periodQuery() {
  return new URLSearchParams({ period: choice.period, tz: choice.tz }).toString();
}

function seriesQuery() {
  const params = new URLSearchParams({ period: choice.period, tz: choice.tz });
  if (choice.granularity) params.set('granularity', choice.granularity);
  return params.toString();
}

/**
 * How to read each dataset, make it the page's own, move it on by a delta
 * (null for those the stream does not feed) and which view shows it.
 */
const DATASETS = {
  overview: {
    label: 'the overview',
    path: () => `/api/overview?${periodQuery()}`,
    read: model.overviewFromApi,
    apply: model.applyDeltaToOverview,
    view: 'overview',
  },
  affiliate: {
    label: 'the affiliates',
    path: () => `/api/table?by=affiliate&${periodQuery()}`,
    read: (json) => model.tableFromApi(json, 'affiliate'),
    apply: model.applyDeltaToTable,
    view: 'affiliates',
  },
  campaign: {
    label: 'the campaigns',
    path: () => `/api/table?by=campaign&${periodQuery()}`,
    read: (json) => model.tableFromApi(json, 'campaign'),
    apply: model.applyDeltaToTable,
    view: 'campaigns',
  },
  series: {
    label: 'the series',
    path: () => `/api/series?${seriesQuery()}`,
    read: model.seriesFromApi,
    apply: model.applyDeltaToSeries,
    view: 'series',
  },
  alerts: {
    label: 'the alerts',
    // Alerts take no period: they are the newest findings, whatever their time.
    path: () => '/api/alerts',
    read: (json) => json,
    apply: null,
    view: 'alerts',
  },
  health: {
    label: 'the health',
    path: () => '/api/health',
    read: (json) => json,
    apply: null,
    view: 'health',
  },
};
const ALL_DATASETS = Object.keys(DATASETS);
const DELTA_DATASETS = ALL_DATASETS.filter((name) => DATASETS[name].apply);

function deltaReadUnderWay() {
  return DELTA_DATASETS.some((name) => reads.has(name));
}

/** Reads `names` again; a read already under way for one of them is abandoned. */
function readDatasets(names) {
  if (names.includes('overview')) readDate = model.formatTime(serverNowMs(), choice.tz, 'date');
  if (names.includes('alerts')) alertsReadAtMs = Date.now();
  for (const name of names) {
    reads.get(name)?.abort();
    const controller = new AbortController();
    reads.set(name, controller);
    readDataset(name, controller);
  }
}

async function readDataset(name, controller) {
  const spec = DATASETS[name];
  let dataset = null;
  try {
    const json = await api(spec.path(), { signal: controller.signal });
    if (controller.signal.aborted) return;
    dataset = spec.read(json);
    if (spec.apply) {
      for (const delta of deltaBuffer) spec.apply(dataset, delta, ctx);
    }
    data[name] = dataset;
    failed.delete(name);
    loaded(name, dataset);
    markDirty(spec.view);
  } catch (error) {
    if (controller.signal.aborted) return;
    readFailed(name, error);
  } finally {
    if (reads.get(name) === controller) {
      reads.delete(name);
      if (!deltaReadUnderWay()) deltaBuffer.length = 0;
    }
  }
  // Read before the open stream's `hello`: deltas between the two were
  // never sent to this page, so read once more (now after `hello`). Once
  // per `hello` only: an answer still below it then is the server's fault
  // and must not make the page ask in a loop.
  const helloVersion = stream.helloVersion;
  if (dataset && spec.apply && helloVersion !== null && dataset.version < helloVersion && !reads.has(name)) {
    if (stream.rereadAt.get(name) === helloVersion) {
      console.warn(`${name} answered version ${dataset.version}, below the stream's hello at ${helloVersion}`);
    } else {
      stream.rereadAt.set(name, helloVersion);
      readDatasets([name]);
    }
  }
}

/** What a fresh answer changes outside its own view. */
function loaded(name, dataset) {
  if (name === 'health') {
    noteServerNow(dataset.now_ms);
    noteApplied(dataset.last_applied_ms);
    renderEdgeWarnings();
  } else if (name === 'overview') {
    renderPeriodRange();
  }
  renderAppError();
}

function readFailed(name, error) {
  if (error instanceof AuthError) {
    showLogin('Your session has ended; sign in again.');
    return;
  }
  failed.set(name, error.message);
  renderAppError();
  timers.retry ??= setTimeout(() => {
    timers.retry = null;
    readDatasets([...failed.keys()]);
  }, RETRY_AFTER_MS);
}

function renderAppError() {
  const banner = $('app-error');
  const messages = [...failed].map(([name, message]) => `Could not read ${DATASETS[name].label}: ${message}.`);
  banner.textContent = messages.length ? `${messages.join(' ')} Trying again shortly.` : '';
  banner.hidden = messages.length === 0;
}

// === HTTP ===

/** A 401: no session or one that ended. */
class AuthError extends Error {}

/** Any other error answer, with the server's sentence. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A same-origin JSON call; the session cookie goes with it. */
async function api(path, { method = 'GET', body, signal } = {}) {
  const init = { method, signal, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const message = await errorMessage(response);
    if (response.status === 401) throw new AuthError(message);
    throw new ApiError(response.status, message);
  }
  return response.status === 204 ? null : response.json();
}

/** The `error` sentence of an error answer, or the status when it has none. */
async function errorMessage(response) {
  try {
    const json = await response.json();
    if (typeof json.error === 'string') return json.error;
  } catch {
    // Not JSON (a proxy's page, say): fall through to the status.
  }
  return `HTTP ${response.status}`;
}

// === Session ===

async function boot() {
  try {
    startApp(await api('/api/session'));
  } catch (error) {
    if (error instanceof AuthError) {
      showLogin('');
    } else if (error instanceof ApiError && error.status === 403) {
      showLogin(error.message);
    } else {
      $('boot').textContent = `Cannot reach the aggregator (${error.message}); trying again in 5 s.`;
      setTimeout(boot, RETRY_AFTER_MS);
    }
  }
}

function startApp(newSession) {
  session = newSession;
  ctx = model.makeContext(newSession);
  choice.tz = newSession.tz;
  choice.seriesCurrency = null;
  $('boot').hidden = true;
  $('login-view').hidden = true;
  $('app').hidden = false;
  $('role').textContent = newSession.role;
  fillTimeZones(newSession.tz);
  $('period').value = choice.period;
  const isAffiliate = newSession.affiliate_id !== null && newSession.affiliate_id !== undefined;
  $('health-edges').hidden = isAffiliate;
  $('health-note').hidden = !isAffiliate;
  updateCsvLinks();
  onRoute();
  readDatasets(ALL_DATASETS);
  connectStream();
  timers.tick = setInterval(tick, TICK_MS);
  timers.health = setInterval(() => readDatasets(['health']), HEALTH_INTERVAL_MS);
}

/** Closes the stream, stops the timers and forgets every dataset. */
function stopApp() {
  clearInterval(timers.tick);
  clearInterval(timers.health);
  clearTimeout(timers.retry);
  Object.assign(timers, { tick: null, health: null, retry: null });
  closeStream();
  clearTimeout(stream.retryTimer);
  Object.assign(stream, {
    state: 'connecting', helloVersion: null, openedBefore: false, attemptIdx: 0, retryAtMs: null, retryTimer: null,
    rereadAt: new Map(),
  });
  for (const controller of reads.values()) controller.abort();
  reads.clear();
  deltaBuffer.length = 0;
  failed.clear();
  for (const name of ALL_DATASETS) data[name] = null;
  clock.lastAppliedMs = null;
  session = null;
  ctx = null;
  // Draw every view empty, so the next viewer never sees this one's data.
  for (const route of ROUTES) RENDERERS[route]();
  renderEdgeWarnings();
  renderAppError();
  renderLiveStatus();
  renderFreshness();
  renderPeriodRange();
}

function showLogin(message) {
  if (session) stopApp();
  $('boot').hidden = true;
  $('app').hidden = true;
  $('login-view').hidden = false;
  $('login-error').textContent = message;
  $('token').focus();
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const button = $('login-submit');
  const tokenInput = $('token');
  button.disabled = true;
  $('login-error').textContent = '';
  try {
    await api('/api/login', { method: 'POST', body: { token: tokenInput.value } });
    tokenInput.value = '';
    startApp(await api('/api/session'));
  } catch (error) {
    const reason = error instanceof AuthError ? error.message : `sign-in failed: ${error.message}`;
    $('login-error').textContent = reason.charAt(0).toUpperCase() + reason.slice(1);
  } finally {
    button.disabled = false;
  }
}

async function onLogout() {
  let message = '';
  try {
    await api('/api/logout', { method: 'POST' });
  } catch (error) {
    if (!(error instanceof AuthError)) message = `Sign-out may not have reached the aggregator: ${error.message}.`;
  }
  showLogin(message);
}

// === Live stream ===

function connectStream() {
  const source = new EventSource('/api/stream');
  stream.source = source;
  const on = (name, handle) => source.addEventListener(name, (event) => {
    if (stream.source !== source) return;
    const payload = parseEvent(name, event);
    if (payload) handle(payload);
  });
  source.addEventListener('open', () => {
    if (stream.source !== source) return;
    stream.state = 'live';
    renderLiveStatus();
  });
  on('hello', onHello);
  on('delta', onDelta);
  on('heartbeat', onHeartbeat);
  on('resync', () => readDatasets(ALL_DATASETS));
  source.addEventListener('error', () => {
    if (stream.source === source) onStreamLost();
  });
}

function parseEvent(name, event) {
  try {
    return JSON.parse(event.data);
  } catch (error) {
    console.warn(`Ignoring a ${name} event that is not JSON: ${error.message}`);
    return null;
  }
}

function closeStream() {
  stream.source?.close();
  stream.source = null;
  stream.helloVersion = null;
}

function onHello(hello) {
  stream.helloVersion = hello.version;
  stream.attemptIdx = 0;
  stream.state = 'live';
  noteServerNow(hello.now_ms);
  renderLiveStatus();
  if (stream.openedBefore) {
    // Back after a drop: deltas were missed, and alerts and health moved.
    readDatasets(ALL_DATASETS);
    return;
  }
  stream.openedBefore = true;
  // The first stream: only what was read before `hello` needs reading
  // again; reads under way check when they finish (readDataset).
  readDatasets(DELTA_DATASETS.filter((name) => !reads.has(name) && !(data[name]?.version >= hello.version)));
}

function onDelta(delta) {
  noteApplied(delta.applied_at_ms);
  for (const name of DELTA_DATASETS) {
    const dataset = data[name];
    if (!dataset || reads.has(name)) continue;
    if (DATASETS[name].apply(dataset, delta, ctx)) markDirty(DATASETS[name].view);
  }
  if (!deltaReadUnderWay()) return;
  if (deltaBuffer.length >= DELTA_BUFFER_MAX) {
    // Reads started now answer at this version or later, so the kept
    // deltas are no longer needed.
    deltaBuffer.length = 0;
    readDatasets(DELTA_DATASETS.filter((name) => reads.has(name)));
  }
  deltaBuffer.push(delta);
}

function onHeartbeat(beat) {
  noteServerNow(beat.now_ms);
  noteApplied(beat.last_applied_ms);
  const alertsVersion = data.alerts?.version ?? -1;
  const sinceAlertsMs = Date.now() - alertsReadAtMs;
  const alertsDue = beat.version > alertsVersion || sinceAlertsMs >= ALERTS_INTERVAL_MAX_MS;
  if (alertsDue && sinceAlertsMs >= ALERTS_INTERVAL_MS && !reads.has('alerts')) readDatasets(['alerts']);
  // Past local midnight "today" is another day: read the new periods.
  if (readDate !== null && model.formatTime(serverNowMs(), choice.tz, 'date') !== readDate) {
    readDatasets(ALL_DATASETS);
  }
}

/** The stream failed or dropped: close it (no browser retry) and come back with backoff. */
function onStreamLost() {
  closeStream();
  stream.state = 'reconnecting';
  const delayMs = model.backoffDelayMs(stream.attemptIdx, Math.random());
  stream.attemptIdx += 1;
  stream.retryAtMs = Date.now() + delayMs;
  stream.retryTimer = setTimeout(() => {
    stream.retryTimer = null;
    stream.retryAtMs = null;
    connectStream();
    renderLiveStatus();
  }, delayMs);
  renderLiveStatus();
  // An EventSource does not say why it failed; a session that ended
  // shows as a 401 here.
  api('/api/session').catch((error) => {
    if (error instanceof AuthError && session) showLogin('Your session has ended; sign in again.');
  });
}

// === Clock and freshness ===

function serverNowMs() {
  return Date.now() + clock.offsetMs;
}

function noteServerNow(nowMs) {
  if (typeof nowMs === 'number') clock.offsetMs = nowMs - Date.now();
}

function noteApplied(appliedMs) {
  if (typeof appliedMs !== 'number') return;
  if (clock.lastAppliedMs === null || appliedMs > clock.lastAppliedMs) clock.lastAppliedMs = appliedMs;
  renderFreshness();
}

function tick() {
  renderFreshness();
  renderLiveStatus();
  renderEdgeWarnings();
  if (choice.route === 'health') markDirty('health');
}

function renderLiveStatus() {
  const status = $('live-status');
  status.dataset.state = stream.state;
  if (stream.state === 'live') {
    status.textContent = 'Live';
  } else if (stream.state === 'connecting') {
    status.textContent = 'Connecting…';
  } else {
    const reason = stream.openedBefore ? 'stream lost' : 'stream unavailable';
    const waitS = stream.retryAtMs === null ? 0 : Math.ceil((stream.retryAtMs - Date.now()) / 1000);
    status.textContent = waitS > 0 ? `Reconnecting in ${waitS} s (${reason})` : `Reconnecting… (${reason})`;
  }
}

function renderFreshness() {
  const lastMs = clock.lastAppliedMs;
  let text = 'No data applied yet';
  let stale = false;
  let title = '';
  if (lastMs !== null) {
    const ageMs = serverNowMs() - lastMs;
    stale = ageMs > STALE_AFTER_MS;
    text = `${stale ? 'Stale: data' : 'Data'} as of ${model.formatAge(ageMs)} ago`;
    title = `Newest batch applied ${model.formatTime(lastMs, choice.tz, 'datetime')} (${choice.tz})`;
  }
  for (const element of [$('freshness'), $('health-freshness')]) {
    element.textContent = element.id === 'health-freshness' && title ? `${text}. ${title}.` : text;
    element.classList.toggle('stale', stale);
    element.title = title;
  }
  $('freshness').dataset.lastAppliedMs = lastMs === null ? '' : String(lastMs);
}

/** How long ago an edge last shipped, at the server's now. */
function edgeAgeMs(edge) {
  if (typeof edge.last_batch_ms === 'number') return serverNowMs() - edge.last_batch_ms;
  return edge.age_ms + (serverNowMs() - data.health.now_ms);
}

function renderEdgeWarnings() {
  const list = $('edge-warnings');
  const edges = (data.health?.edges ?? []).filter((edge) => edge.state === 'lagging' || edge.state === 'silent');
  list.replaceChildren(...edges.map((edge) => el(
    'li',
    { 'data-edge-id': edge.edge_id, 'data-state': edge.state },
    `Edge ${edge.edge_id} ${edge.state}: no data for ${model.formatAge(edgeAgeMs(edge))}`,
  )));
  list.hidden = edges.length === 0;
}

function renderPeriodRange() {
  const period = data.overview?.period;
  $('period-range').textContent = period
    ? `${PERIOD_LABELS[period.name] ?? period.name}: ${model.formatTime(period.from_ms, choice.tz, 'minute')} – `
      + `${model.formatTime(period.to_ms, choice.tz, 'minute')} ${choice.tz}, compared with the period before`
    : '';
}

// === Rendering ===

/** Views whose data changed since they were last drawn. */
const dirty = new Set();
let frame = 0;

/**
 * Notes that `view` needs drawing. Only the view on screen is drawn, at
 * most once per animation frame however many deltas arrive; the others
 * are drawn when shown.
 */
function markDirty(view) {
  dirty.add(view);
  if (view === choice.route && !frame) frame = requestAnimationFrame(renderFrame);
}

function renderFrame() {
  frame = 0;
  if (session && dirty.delete(choice.route)) RENDERERS[choice.route]();
}

function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  element.append(...children);
  return element;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

function svgEl(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  setAttributes(element, attributes);
  element.append(...children);
  return element;
}

function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) element.setAttribute(name, String(value));
  }
}

function $(id) {
  return document.getElementById(id);
}

function onRoute() {
  const name = location.hash.replace(/^#\/?/, '');
  choice.route = ROUTES.includes(name) ? name : 'overview';
  for (const route of ROUTES) {
    $(`view-${route}`).hidden = route !== choice.route;
    const link = $(`nav-${route}`);
    if (route === choice.route) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  markDirty(choice.route);
}

// --- Overview ---

function buildTiles() {
  $('tiles').replaceChildren(...TILES.map(({ metric, label }) => el(
    'div',
    { class: 'tile', 'data-testid': `tile-${metric}` },
    el('h2', { class: 'tile-label' }, label),
    el('div', { class: 'tile-value' }),
    el('div', { class: 'tile-foot' },
      el('span', { class: 'change', 'data-testid': `change-${metric}` }),
      el('span', { class: 'muted' }, ' vs previous period')),
  )));
}

function renderOverview() {
  const overview = data.overview;
  const current = overview && model.derive(overview.current, ctx);
  const previous = overview && model.derive(overview.previousMetrics, ctx);
  for (const { metric } of TILES) {
    const tile = document.querySelector(`[data-testid="tile-${metric}"]`);
    const value = tile.querySelector('.tile-value');
    const change = tile.querySelector('.change');
    if (!overview) {
      tile.dataset.value = '';
      value.replaceChildren('…');
      change.textContent = '';
      continue;
    }
    if (model.COUNT_METRICS.includes(metric)) {
      tile.dataset.value = String(current[metric]);
      value.replaceChildren(el('div', { class: 'tile-main' }, model.formatCount(current[metric])));
    } else if (metric === 'conversion_rate') {
      tile.dataset.value = current.conversion_rate === null ? '' : String(current.conversion_rate);
      value.replaceChildren(el('div', { class: 'tile-main' }, model.formatRate(current.conversion_rate)));
    } else {
      value.replaceChildren(...moneyTileLines(current, metric));
    }
    const [now, before] = model.comparedValues(metric, current, previous);
    change.textContent = model.formatChange(now, before);
    change.dataset.direction = model.changeDirection(now, before);
    change.title = `Previous period: ${previousText(previous, metric)}`;
  }
}

/**
 * A money tile: the reporting-currency total first and largest when there
 * is one, then one line per currency.
 */
function moneyTileLines(derived, metric) {
  const lines = [];
  if (derived.reporting) {
    const { dataValue, text } = model.formatMoneyLine(derived.reporting, metric, derived.clicks);
    lines.push(el('div', { class: 'tile-main', 'data-testid': `money-${metric}-reporting`, 'data-value': dataValue }, text));
  }
  const perCurrencyClass = derived.reporting ? 'tile-sub' : 'tile-main';
  for (const line of derived.money) {
    const { dataValue, text } = model.formatMoneyLine(line, metric, derived.clicks);
    lines.push(el('div', { class: perCurrencyClass, 'data-testid': `money-${metric}-${line.currency}`, 'data-value': dataValue }, text));
  }
  if (lines.length === 0) lines.push(el('div', { class: 'tile-main muted' }, model.NONE));
  const unconverted = derived.reporting?.unconverted ?? [];
  if (unconverted.length) {
    lines.push(el('div', { class: 'tile-note' }, `Not in ${derived.reporting.currency} (no rate): ${unconverted.join(', ')}`));
  }
  return lines;
}

function previousText(previous, metric) {
  if (model.COUNT_METRICS.includes(metric)) return model.formatCount(previous[metric]);
  if (metric === 'conversion_rate') return model.formatRate(previous.conversion_rate);
  return model.moneyCellText(previous, metric);
}

// --- Tables ---

/** A virtualised table: only the rows in view (and a margin) are in the DOM. */
class TableView {
  constructor(dataset, route) {
    this.dataset = dataset;
    this.route = route;
    this.scroll = $(`scroll-${route}`);
    this.filter = $(`filter-${route}`);
    this.count = $(`count-${route}`);
    this.csv = $(`csv-${route}`);
    this.column = 'id';
    this.direction = 'asc';
    /** The filtered, sorted rows, and what they were computed from. */
    this.rows = [];
    this.rowsOf = { table: null, version: null, key: null };
    this.rowHeightPx = ROW_HEIGHT_PX;
    this.rowHeightMeasured = false;
    this.windowFrame = 0;

    const idLabel = dataset === 'affiliate' ? 'Affiliate' : 'Campaign';
    this.headRow = el('tr', {}, ...model.TABLE_COLUMNS.map((column) => el(
      'th',
      { scope: 'col', 'data-col': column, 'data-sort': column, class: column === 'id' ? null : 'num' },
      el('button', { type: 'button', class: 'sort' }, column === 'id' ? idLabel : COLUMN_LABELS[column]),
    )));
    this.head = el('thead', {}, this.headRow);
    this.body = el('tbody');
    $(`table-${route}`).replaceChildren(this.head, this.body);

    this.head.addEventListener('click', (event) => {
      const th = event.target.closest('th[data-sort]');
      if (th) this.sortBy(th.dataset.sort);
    });
    this.scroll.addEventListener('scroll', () => {
      this.windowFrame ||= requestAnimationFrame(() => {
        this.windowFrame = 0;
        this.renderWindow();
      });
    }, { passive: true });
    this.filter.addEventListener('input', () => {
      updateCsvLinks();
      this.scroll.scrollTop = 0;
      markDirty(route);
    });
    this.renderSortMarks();
  }

  /** A new column sorts ascending; the same column again flips the order. */
  sortBy(column) {
    if (column === this.column) {
      this.direction = this.direction === 'asc' ? 'desc' : 'asc';
    } else {
      this.column = column;
      this.direction = 'asc';
    }
    this.renderSortMarks();
    markDirty(this.route);
  }

  renderSortMarks() {
    for (const th of this.headRow.children) {
      const sorted = th.dataset.sort === this.column;
      if (sorted) th.setAttribute('aria-sort', this.direction === 'asc' ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
  }

  render() {
    const table = data[this.dataset];
    const key = `${this.filter.value}|${this.column}|${this.direction}`;
    const of = this.rowsOf;
    if (of.table !== table || of.version !== table?.version || of.key !== key) {
      this.rows = table
        ? model.visibleRows(table, { filter: this.filter.value, column: this.column, direction: this.direction }, ctx)
        : [];
      this.rowsOf = { table, version: table?.version, key };
    }
    const total = table ? table.rows.size : 0;
    this.count.textContent = !table
      ? ''
      : this.rows.length === total
        ? `${model.formatCount(total)} ${total === 1 ? 'row' : 'rows'}`
        : `${model.formatCount(this.rows.length)} of ${model.formatCount(total)} rows`;
    this.renderWindow();
  }

  renderWindow() {
    const table = data[this.dataset];
    const nColumns = model.TABLE_COLUMNS.length;
    if (!table || this.rows.length === 0) {
      const text = !session ? '' : !table ? 'Loading…' : 'No rows';
      this.body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: nColumns }, text)));
      return;
    }
    const nRows = this.rows.length;
    const viewTopPx = Math.max(0, this.scroll.scrollTop - this.head.offsetHeight);
    const nVisible = Math.ceil(this.scroll.clientHeight / this.rowHeightPx) + 1;
    const topIdx = Math.floor(viewTopPx / this.rowHeightPx);
    const firstIdx = Math.max(0, topIdx - OVERSCAN_ROWS);
    const endIdx = Math.min(nRows, topIdx + nVisible + OVERSCAN_ROWS);
    const fragment = document.createDocumentFragment();
    fragment.append(this.spacer(firstIdx * this.rowHeightPx));
    for (let rowIdx = firstIdx; rowIdx < endIdx; rowIdx += 1) fragment.append(this.rowElement(this.rows[rowIdx]));
    fragment.append(this.spacer((nRows - endIdx) * this.rowHeightPx));
    this.body.replaceChildren(fragment);
    if (!this.rowHeightMeasured) this.measureRowHeight();
  }

  /** Takes the row height from a drawn row (fonts differ), then draws again with it. */
  measureRowHeight() {
    const row = this.body.querySelector('tr[data-id]');
    const heightPx = row?.getBoundingClientRect().height ?? 0;
    if (heightPx <= 0) return;
    this.rowHeightMeasured = true;
    if (Math.abs(heightPx - this.rowHeightPx) > 0.5) {
      this.rowHeightPx = heightPx;
      this.renderWindow();
    }
  }

  spacer(heightPx) {
    const cell = el('td', { colspan: model.TABLE_COLUMNS.length });
    // Set through the CSSOM, which the page's Content-Security-Policy allows whatever its style-src.
    cell.style.height = `${heightPx}px`;
    return el('tr', { class: 'spacer', 'aria-hidden': 'true' }, cell);
  }

  rowElement(entry) {
    const derived = model.cachedDerive(entry, ctx);
    const cells = model.TABLE_COLUMNS.map((column) => {
      if (column === 'id') return el('td', { 'data-col': 'id', 'data-value': entry.id }, String(entry.id));
      if (model.COUNT_METRICS.includes(column)) {
        return el('td', { 'data-col': column, 'data-value': derived[column], class: 'num' }, model.formatCount(derived[column]));
      }
      if (column === 'conversion_rate') {
        const rate = derived.conversion_rate;
        return el('td', { 'data-col': column, 'data-value': rate === null ? '' : rate, class: 'num' }, model.formatRate(rate));
      }
      const text = model.moneyCellText(derived, column);
      const reporting = derived.reporting ? model.formatMoneyLine(derived.reporting, column, derived.clicks) : null;
      // The tooltip keeps every currency's amount in reach: the cell shows
      // only the reporting total when there is one, and a narrow column
      // cuts off a long list.
      const breakdown = derived.money.map((line) => model.formatMoneyLine(line, column, derived.clicks).text).join(' · ');
      return el('td', {
        'data-col': column,
        'data-value': model.moneyDataValue(derived, column),
        'data-reporting-value': reporting?.dataValue,
        title: breakdown || null,
        class: 'num',
      }, text);
    });
    return el('tr', { 'data-id': entry.id }, ...cells);
  }
}

let tableViews = null;

function updateCsvLinks() {
  for (const [by, route] of [['affiliate', 'affiliates'], ['campaign', 'campaigns']]) {
    const params = new URLSearchParams({ by, format: 'csv', period: choice.period, tz: choice.tz });
    const filter = $(`filter-${route}`).value.trim();
    if (filter) params.set('q', filter);
    $(`csv-${route}`).href = `/api/table?${params}`;
  }
  $('csv-alerts').href = '/api/alerts?format=csv';
}

// --- Series ---

const CHART_HEIGHT_PX = 360;
const CHART_PADDING = { left: 96, right: 16, top: 14, bottom: 34 };
/** Least room per x-axis label. */
const CHART_LABEL_WIDTH_PX = 84;

/** The currencies to offer: the reporting one, then each in the series. */
function seriesCurrencies() {
  const options = [];
  if (ctx?.reporting) options.push({ value: model.REPORTING_CHOICE, label: `${ctx.reporting.currency} (reporting)` });
  const codes = new Set();
  for (const bucket of data.series?.buckets ?? []) {
    for (const line of model.cachedDerive(bucket, ctx).money) codes.add(line.currency);
  }
  for (const code of [...codes].sort()) options.push({ value: code, label: code });
  return options;
}

function renderSeriesControls() {
  const money = model.isMoneySeries(choice.seriesMetric);
  const select = $('series-currency');
  select.hidden = !money;
  $('series-currency-label').hidden = !money;
  const options = session ? seriesCurrencies() : [];
  const values = options.map((option) => option.value);
  // Rebuilt only when the choices change, so an open list is not pulled away.
  if (values.join(' ') !== [...select.options].map((option) => option.value).join(' ')) {
    select.replaceChildren(...options.map((option) => el('option', { value: option.value }, option.label)));
  }
  if (!values.includes(choice.seriesCurrency)) choice.seriesCurrency = values[0] ?? null;
  select.value = choice.seriesCurrency ?? '';
  const minute = $('series-granularity').querySelector('option[value="minute"]');
  minute.disabled = !MINUTE_PERIODS.includes(choice.period);
  $('series-granularity').value = choice.granularity;
}

function renderSeries() {
  renderSeriesControls();
  const svg = $('series-chart');
  const series = data.series;
  const metric = choice.seriesMetric;
  const summary = $('series-summary');
  if (!series) {
    svg.replaceChildren();
    summary.textContent = session ? 'Loading…' : '';
    return;
  }
  const widthPx = Math.max(480, Math.floor(svg.parentElement.clientWidth));
  svg.setAttribute('viewBox', `0 0 ${widthPx} ${CHART_HEIGHT_PX}`);
  svg.setAttribute('width', widthPx);
  svg.setAttribute('height', CHART_HEIGHT_PX);
  const metricLabel = $('series-metric').selectedOptions[0]?.textContent ?? metric;
  if (model.isMoneySeries(metric) && choice.seriesCurrency === null) {
    svg.replaceChildren(svgEl('text', { x: widthPx / 2, y: CHART_HEIGHT_PX / 2, class: 'chart-empty' }, 'No money in this period'));
    summary.textContent = '';
    return;
  }
  svg.setAttribute('aria-label', `${metricLabel} per ${series.granularity}`);
  summary.textContent = `${model.formatCount(series.buckets.length)} buckets of one ${series.granularity}, ${choice.tz}`;
  svg.replaceChildren(...chartElements(series, metric, widthPx));
}

/** Axis tick text for a metric's plotted value. */
function tickText(metric, tick) {
  if (model.COUNT_METRICS.includes(metric)) return model.formatCount(tick);
  if (metric === 'conversion_rate') return model.formatRate(tick);
  const exponent = choice.seriesCurrency === model.REPORTING_CHOICE
    ? ctx.reporting.exponent
    : ctx.exponentOf(choice.seriesCurrency);
  // EPC ticks are minor units with fractions: shown in major units, four decimals.
  if (metric === 'epc') {
    return model.formatMinor(BigInt(Math.round(tick * 10 ** (model.EPC_DECIMALS - exponent))), model.EPC_DECIMALS);
  }
  return model.formatMinor(BigInt(tick), exponent);
}

function chartElements(series, metric, widthPx) {
  const pad = CHART_PADDING;
  const plotWidth = widthPx - pad.left - pad.right;
  const plotHeight = CHART_HEIGHT_PX - pad.top - pad.bottom;
  const points = series.buckets.map((bucket) => model.seriesPoint(model.cachedDerive(bucket, ctx), metric, choice.seriesCurrency, ctx));
  let low = 0;
  let high = 0;
  for (const point of points) {
    if (point.plot === null) continue;
    low = Math.min(low, point.plot);
    high = Math.max(high, point.plot);
  }
  const integer = model.COUNT_METRICS.includes(metric) || metric === 'revenue' || metric === 'payable';
  const ticks = model.niceTicks(low, high, 5, integer);
  const [axisLow, axisHigh] = [ticks[0], ticks[ticks.length - 1]];
  const yOf = (value) => pad.top + (plotHeight * (axisHigh - value)) / (axisHigh - axisLow);
  const elements = [];

  for (const tick of ticks) {
    const y = yOf(tick);
    elements.push(svgEl('line', { x1: pad.left, x2: widthPx - pad.right, y1: y, y2: y, class: tick === 0 ? 'axis' : 'grid' }));
    elements.push(svgEl('text', { x: pad.left - 6, y: y + 4, class: 'tick y-tick' }, tickText(metric, tick)));
  }

  const nBuckets = points.length;
  const slotWidth = plotWidth / Math.max(1, nBuckets);
  const barWidth = slotWidth >= 4 ? slotWidth * 0.8 : Math.max(1, slotWidth);
  const spansDays = series.period.to_ms - series.period.from_ms > 86_400_000;
  const labelStyle = series.granularity === 'day' ? 'day' : spansDays ? 'dayhm' : 'hm';
  const tipStyle = series.granularity === 'day' ? 'date' : 'minute';
  const labelEvery = Math.max(1, Math.ceil(nBuckets / Math.max(1, Math.floor(plotWidth / CHART_LABEL_WIDTH_PX))));
  const zeroY = yOf(0);
  series.buckets.forEach((bucket, bucketIdx) => {
    const point = points[bucketIdx];
    const x = pad.left + bucketIdx * slotWidth + (slotWidth - barWidth) / 2;
    const y = point.plot === null ? zeroY : yOf(point.plot);
    const tip = `${model.formatTime(bucket.start_ms, choice.tz, tipStyle)} – `
      + `${model.formatTime(bucket.end_ms, choice.tz, tipStyle)}: ${point.text}`;
    elements.push(svgEl('rect', {
      x, width: barWidth, y: Math.min(y, zeroY), height: Math.abs(zeroY - y),
      class: point.plot !== null && point.plot < 0 ? 'bar negative' : 'bar',
      'data-start-ms': bucket.start_ms,
      'data-value': point.dataValue,
    }, svgEl('title', {}, tip)));
    if (bucketIdx % labelEvery === 0) {
      elements.push(svgEl('text', {
        x: pad.left + (bucketIdx + 0.5) * slotWidth, y: CHART_HEIGHT_PX - pad.bottom + 18, class: 'tick x-tick',
      }, model.formatTime(bucket.start_ms, choice.tz, labelStyle)));
    }
  });
  return elements;
}

// --- Alerts ---

function renderAlerts() {
  const rows = data.alerts?.rows ?? [];
  const body = $('table-alerts').tBodies[0];
  $('count-alerts').textContent = data.alerts ? `${model.formatCount(rows.length)} ${rows.length === 1 ? 'row' : 'rows'}` : '';
  if (rows.length === 0) {
    const text = !session ? '' : data.alerts ? 'No alerts' : 'Loading…';
    body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: 9 }, text)));
    return;
  }
  const cell = (column, value, numeric) => el('td', { 'data-col': column, class: numeric ? 'num' : null }, value === null || value === undefined ? '' : String(value));
  body.replaceChildren(...rows.map((row) => el(
    'tr',
    { 'data-kind': row.kind, 'data-severity': row.severity },
    cell('time', model.formatTime(row.time_ms, choice.tz, 'datetime')),
    cell('kind', row.kind),
    cell('severity', row.severity),
    cell('edge', row.edge_id, true),
    cell('affiliate', row.affiliate_id, true),
    cell('campaign', row.campaign_id, true),
    cell('sub1', row.sub1),
    cell('count', model.formatCount(row.count), true),
    cell('message', row.message),
  )));
}

// --- Health ---

function renderHealth() {
  const body = $('health-edges').tBodies[0];
  const health = data.health;
  const edges = [...(health?.edges ?? [])].sort((a, b) => a.edge_id - b.edge_id);
  if (edges.length === 0) {
    const text = !session ? '' : health ? 'No edges have shipped yet' : 'Loading…';
    body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: 4 }, text)));
    return;
  }
  body.replaceChildren(...edges.map((edge) => el(
    'tr',
    { 'data-edge-id': edge.edge_id, 'data-state': edge.state },
    el('td', { 'data-col': 'edge', class: 'num' }, String(edge.edge_id)),
    el('td', { 'data-col': 'state' }, el('span', { class: `state state-${edge.state}` }, edge.state)),
    el('td', { 'data-col': 'last_batch' },
      typeof edge.last_batch_ms === 'number' ? model.formatTime(edge.last_batch_ms, choice.tz, 'datetime') : model.NONE),
    el('td', { 'data-col': 'age', class: 'num' }, model.formatAge(edgeAgeMs(edge))),
  )));
}

const RENDERERS = {
  overview: renderOverview,
  affiliates: () => tableViews.affiliate.render(),
  campaigns: () => tableViews.campaign.render(),
  series: renderSeries,
  alerts: renderAlerts,
  health: renderHealth,
};

// === Controls ===

function fillTimeZones(sessionTz) {
  const zones = [...new Set([sessionTz, ...TIME_ZONES])];
  $('tz').replaceChildren(...zones.map((zone) => el('option', { value: zone }, zone)));
  $('tz').value = choice.tz;
}

/** A new period or zone: every dataset is read again, every view redrawn. */
function onSelectionChange() {
  if (!MINUTE_PERIODS.includes(choice.period) && choice.granularity === 'minute') choice.granularity = '';
  updateCsvLinks();
  readDatasets(ALL_DATASETS);
  for (const route of ROUTES) markDirty(route);
  renderPeriodRange();
  renderFreshness();
}

function wireControls() {
  $('login').addEventListener('submit', onLoginSubmit);
  $('logout').addEventListener('click', onLogout);
  $('period').addEventListener('change', (event) => {
    choice.period = event.target.value;
    onSelectionChange();
  });
  $('tz').addEventListener('change', (event) => {
    choice.tz = event.target.value;
    onSelectionChange();
  });
  $('series-metric').addEventListener('change', (event) => {
    choice.seriesMetric = event.target.value;
    markDirty('series');
  });
  $('series-currency').addEventListener('change', (event) => {
    choice.seriesCurrency = event.target.value;
    markDirty('series');
  });
  $('series-granularity').addEventListener('change', (event) => {
    choice.granularity = event.target.value;
    readDatasets(['series']);
  });
  window.addEventListener('hashchange', onRoute);
  // Chart width and the number of table rows in view follow the window.
  window.addEventListener('resize', () => markDirty(choice.route));
}

buildTiles();
tableViews = {
  affiliate: new TableView('affiliate', 'affiliates'),
  campaign: new TableView('campaign', 'campaigns'),
};
wireControls();
boot();
