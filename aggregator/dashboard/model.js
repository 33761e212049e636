// The dashboard's pure logic: exact money arithmetic, conversion into the
// reporting currency, the datasets the page keeps and how stream deltas
// change them, sorting and filtering of table rows, bucket lookup, and
// text formatting.
//
// Nothing here touches the DOM, the network or the clock: app.js does
// those, and test/model.test.mjs runs this file under node. Money is
// BigInt minor units from parse to display; Number appears only for
// ratios (conversion rate, EPC) and chart geometry.

// === Money arithmetic ===

/** An API `*_minor` string ("-1250") as BigInt; missing is zero. */
export function parseMinor(text) {
  return text === undefined || text === null ? 0n : BigInt(text);
}

/**
 * `numerator / denominator` rounded half to even (ties to the even
 * quotient, either sign), as the server rounds. `denominator` must be
 * positive.
 */
export function divRoundHalfEven(numerator, denominator) {
  if (denominator <= 0n) throw new RangeError(`denominator must be positive, is ${denominator}`);
  // BigInt division truncates toward zero; the remainder has the sign of
  // the numerator.
  const quotient = numerator / denominator;
  const remainder = numerator % denominator;
  const twice = (remainder < 0n ? -remainder : remainder) * 2n;
  const away = twice > denominator || (twice === denominator && quotient % 2n !== 0n);
  if (!away) return quotient;
  return numerator < 0n ? quotient - 1n : quotient + 1n;
}

/**
 * A rate as the rates file writes it ("0.92", "163"): `{mantissa, scale}`
 * meaning mantissa / 10^scale. Anything else (signs, exponents, commas,
 * zero) is `null`, which the page treats as "no rate", as the server
 * refuses such a file.
 */
export function parseRate(text) {
  if (typeof text !== 'string' || !/^\d+(\.\d+)?$/.test(text)) return null;
  const [integer, fraction = ''] = text.split('.');
  const mantissa = BigInt(integer + fraction);
  return mantissa > 0n ? { mantissa, scale: fraction.length } : null;
}

/**
 * `minor` units of a currency with `fromExponent` decimals in minor units
 * of one with `toExponent`: round_half_even(minor × rate ×
 * 10^(toExponent − fromExponent)), exact.
 */
export function convertMinor(minor, rate, fromExponent, toExponent) {
  const product = minor * rate.mantissa;
  const shift = toExponent - fromExponent - rate.scale;
  if (shift >= 0) return product * 10n ** BigInt(shift);
  return divRoundHalfEven(product, 10n ** BigInt(-shift));
}

// === Context ===

/** Decimals assumed for a currency the session's table does not list. */
export const EXPONENT_FALLBACK = 2;

/**
 * What derived values depend on besides the data: exponents, the
 * reporting currency with parsed rates, and the forced affiliate scope.
 * Built once per session.
 */
export function makeContext(session) {
  const exponents = { ...(session.exponents ?? {}) };
  const exponentOf = (currency) => exponents[currency] ?? EXPONENT_FALLBACK;
  let reporting = null;
  if (session.reporting_currency) {
    const rates = new Map();
    for (const [currency, text] of Object.entries(session.rates ?? {})) {
      const rate = parseRate(text);
      if (rate) rates.set(currency, rate);
    }
    rates.set(session.reporting_currency, { mantissa: 1n, scale: 0 });
    reporting = {
      currency: session.reporting_currency,
      exponent: exponentOf(session.reporting_currency),
      rates,
    };
  }
  return { exponentOf, reporting, affiliateId: session.affiliate_id ?? null };
}

// === Metrics ===

/** The counters a Metrics carries and a delta row adds to. */
const COUNT_FIELDS = ['impressions', 'clicks', 'unique_clicks', 'leads', 'sales', 'duplicates', 'flagged'];

/**
 * The page's own form of an API `Metrics`: counters as Numbers, money per
 * currency as BigInt revenue, commission and parent commission. Payable,
 * margin, EPC and the ratios are derived (`derive`), so they stay right
 * after deltas.
 */
export function emptyMetrics() {
  const metrics = { money: new Map() };
  for (const field of COUNT_FIELDS) metrics[field] = 0;
  return metrics;
}

export function metricsFromApi(api) {
  const metrics = emptyMetrics();
  for (const field of COUNT_FIELDS) metrics[field] = api[field] ?? 0;
  for (const money of api.money ?? []) {
    metrics.money.set(money.currency, {
      exponent: money.exponent,
      revenue: parseMinor(money.revenue_minor),
      commission: parseMinor(money.commission_minor),
      parent: parseMinor(money.parent_commission_minor),
    });
  }
  return metrics;
}

/** Adds one delta row (counters and money, either sign) to `metrics`. */
export function addDeltaRow(metrics, row, ctx) {
  for (const field of COUNT_FIELDS) metrics[field] += row[field] ?? 0;
  for (const money of row.money ?? []) {
    let totals = metrics.money.get(money.currency);
    if (!totals) {
      totals = { exponent: ctx.exponentOf(money.currency), revenue: 0n, commission: 0n, parent: 0n };
      metrics.money.set(money.currency, totals);
    }
    totals.revenue += parseMinor(money.revenue_minor);
    totals.commission += parseMinor(money.commission_minor);
    totals.parent += parseMinor(money.parent_commission_minor);
  }
}

/** Payable per click in minor units, a Number with fractions; null without clicks. */
function perClick(payable, clicks) {
  return clicks > 0 ? Number(payable) / clicks : null;
}

/**
 * Everything the page shows of `metrics`, with the API's definitions:
 * conversions = leads + sales, rate = conversions / clicks, payable =
 * commission + parent commission, margin = revenue − payable, EPC =
 * payable / clicks. Money lines are in currency-code order; a currency
 * whose money is all zero is left out, as the server leaves it out.
 */
export function derive(metrics, ctx) {
  const clicks = metrics.clicks;
  const conversions = metrics.leads + metrics.sales;
  const money = [];
  for (const currency of [...metrics.money.keys()].sort()) {
    const totals = metrics.money.get(currency);
    if (totals.revenue === 0n && totals.commission === 0n && totals.parent === 0n) continue;
    const payable = totals.commission + totals.parent;
    money.push({
      currency,
      exponent: totals.exponent,
      revenue: totals.revenue,
      payable,
      margin: totals.revenue - payable,
      epc: perClick(payable, clicks),
    });
  }
  return {
    impressions: metrics.impressions,
    clicks,
    conversions,
    flagged: metrics.flagged,
    conversion_rate: clicks > 0 ? conversions / clicks : null,
    money,
    reporting: ctx.reporting ? reportingOf(money, clicks, ctx.reporting) : null,
  };
}

/**
 * The money lines in the reporting currency. Revenue and payable are
 * converted per currency, then summed; margin is converted revenue minus
 * converted payable (as the server computes it, so margin = revenue −
 * payable holds in the reporting currency too).
 */
function reportingOf(money, clicks, reporting) {
  let revenue = 0n;
  let payable = 0n;
  const unconverted = [];
  for (const line of money) {
    const rate = reporting.rates.get(line.currency);
    if (!rate) {
      unconverted.push(line.currency);
      continue;
    }
    revenue += convertMinor(line.revenue, rate, line.exponent, reporting.exponent);
    payable += convertMinor(line.payable, rate, line.exponent, reporting.exponent);
  }
  return {
    currency: reporting.currency,
    exponent: reporting.exponent,
    revenue,
    payable,
    margin: revenue - payable,
    epc: perClick(payable, clicks),
    unconverted,
  };
}

/** `entry.derived`, computed once after each change of `entry.metrics`. */
export function cachedDerive(entry, ctx) {
  entry.derived ??= derive(entry.metrics, ctx);
  return entry.derived;
}

// === Datasets and deltas ===
//
// Each dataset keeps the `version` it was read at. A delta applies only
// when its version is above it, and then moves the dataset to its
// version, so a delta already counted in a fetched answer (or seen twice)
// changes nothing. Each apply function answers whether anything shown
// changed.

function inRange(ms, period) {
  return ms >= period.from_ms && ms < period.to_ms;
}

/** Rows of other affiliates never count for an affiliate's session. */
function inScope(row, ctx) {
  return ctx.affiliateId === null || row.affiliate_id === ctx.affiliateId;
}

/** Claims `delta` for `dataset`: false when its version is not above the dataset's. */
function claim(dataset, delta) {
  if (delta.version <= dataset.version) return false;
  dataset.version = delta.version;
  return true;
}

export function overviewFromApi(json) {
  return {
    version: json.version,
    period: json.period,
    previous: json.previous,
    current: metricsFromApi(json.current),
    previousMetrics: metricsFromApi(json.previous_metrics),
  };
}

export function applyDeltaToOverview(overview, delta, ctx) {
  if (!claim(overview, delta)) return false;
  let changed = false;
  for (const row of delta.rows) {
    if (!inScope(row, ctx)) continue;
    if (inRange(row.minute_ms, overview.period)) {
      addDeltaRow(overview.current, row, ctx);
      changed = true;
    } else if (inRange(row.minute_ms, overview.previous)) {
      addDeltaRow(overview.previousMetrics, row, ctx);
      changed = true;
    }
  }
  return changed;
}

/** `by` is "affiliate" or "campaign", as asked for. */
export function tableFromApi(json, by) {
  const rows = new Map();
  for (const row of json.rows) rows.set(row.id, { id: row.id, metrics: metricsFromApi(row), derived: null });
  return { version: json.version, period: json.period, by, rows };
}

/** Adds each row to its id's table row, creating the row for a new id. */
export function applyDeltaToTable(table, delta, ctx) {
  if (!claim(table, delta)) return false;
  const idField = table.by === 'affiliate' ? 'affiliate_id' : 'campaign_id';
  let changed = false;
  for (const row of delta.rows) {
    if (!inScope(row, ctx) || !inRange(row.minute_ms, table.period)) continue;
    const id = row[idField];
    let entry = table.rows.get(id);
    if (!entry) {
      entry = { id, metrics: emptyMetrics(), derived: null };
      table.rows.set(id, entry);
    }
    addDeltaRow(entry.metrics, row, ctx);
    entry.derived = null;
    changed = true;
  }
  return changed;
}

export function seriesFromApi(json) {
  const buckets = json.buckets.map((bucket) => ({
    start_ms: bucket.start_ms,
    end_ms: bucket.end_ms,
    metrics: metricsFromApi(bucket),
    derived: null,
  }));
  return {
    version: json.version,
    period: json.period,
    granularity: json.granularity,
    buckets,
    starts: buckets.map((bucket) => bucket.start_ms),
  };
}

/**
 * The index of the last start at or before `ms` in the ascending
 * `starts`, by binary search; -1 when `ms` is before the first.
 */
export function bucketIndex(starts, ms) {
  let low = 0;
  let high = starts.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (starts[mid] <= ms) low = mid + 1;
    else high = mid;
  }
  return low - 1;
}

export function applyDeltaToSeries(series, delta, ctx) {
  if (!claim(series, delta)) return false;
  let changed = false;
  for (const row of delta.rows) {
    if (!inScope(row, ctx)) continue;
    const bucketIdx = bucketIndex(series.starts, row.minute_ms);
    if (bucketIdx < 0) continue;
    const bucket = series.buckets[bucketIdx];
    if (row.minute_ms >= bucket.end_ms) continue;
    addDeltaRow(bucket.metrics, row, ctx);
    bucket.derived = null;
    changed = true;
  }
  return changed;
}

// === Tables: columns, sorting, filtering ===

export const TABLE_COLUMNS = [
  'id', 'impressions', 'clicks', 'conversions', 'conversion_rate', 'revenue', 'payable', 'margin', 'epc', 'flagged',
];
/** Counts; `flagged` is the events fraud rules set apart (in no other count). */
export const COUNT_METRICS = ['impressions', 'clicks', 'conversions', 'flagged'];
export const MONEY_METRICS = ['revenue', 'payable', 'margin'];

/**
 * What a money column sorts and compares by: the reporting-currency value
 * when there is one, else the first currency's (by code); EPC is a Number
 * or null, the others BigInt.
 */
export function headlineMoney(derived, metric) {
  if (derived.reporting) return derived.reporting[metric];
  const first = derived.money[0];
  if (first) return first[metric];
  return metric === 'epc' ? null : 0n;
}

/** The value a column sorts by: Number, BigInt or null (no clicks). */
export function sortValue(entry, column, ctx) {
  if (column === 'id') return entry.id;
  const derived = cachedDerive(entry, ctx);
  if (column === 'epc' || MONEY_METRICS.includes(column)) return headlineMoney(derived, column);
  return derived[column];
}

/** Orders Numbers and BigInts alike; null sorts below every value. */
export function compareValues(a, b) {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The table's rows whose id contains `filter`, sorted by `column` in
 * `direction` ("asc" or "desc"); ties go by id, ascending.
 */
export function visibleRows(table, { filter, column, direction }, ctx) {
  const needle = filter.trim();
  const keyed = [];
  for (const entry of table.rows.values()) {
    if (needle === '' || String(entry.id).includes(needle)) keyed.push({ key: sortValue(entry, column, ctx), entry });
  }
  const sign = direction === 'desc' ? -1 : 1;
  keyed.sort((a, b) => sign * compareValues(a.key, b.key) || a.entry.id - b.entry.id);
  return keyed.map((item) => item.entry);
}

/**
 * A money cell's `data-value`: "EUR:8000 USD:10000" (minor units, by
 * code); for EPC the per-click Number, currencies without clicks left out.
 */
export function moneyDataValue(derived, metric) {
  return derived.money
    .filter((line) => line[metric] !== null)
    .map((line) => `${line.currency}:${line[metric]}`)
    .join(' ');
}

// === Formatting ===
//
// Fixed separators (comma for thousands, point for decimals) rather than
// the browser's locale, so every viewer and every screenshot reads alike.

/** Minus sign used in displayed numbers. */
const MINUS = '\u2212';
/** Shown for a value that does not exist (a ratio without clicks). */
export const NONE = '–';

/** "1234567" as "1,234,567". */
export function groupThousands(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** BigInt `minor` units with `exponent` decimals as "1,234.56" ("−0.05"). */
export function formatMinor(minor, exponent) {
  const negative = minor < 0n;
  let digits = (negative ? -minor : minor).toString();
  let text;
  if (exponent === 0) {
    text = groupThousands(digits);
  } else {
    digits = digits.padStart(exponent + 1, '0');
    const integer = digits.slice(0, digits.length - exponent);
    text = `${groupThousands(integer)}.${digits.slice(digits.length - exponent)}`;
  }
  return negative ? MINUS + text : text;
}

export function formatMoney(currency, minor, exponent) {
  return `${currency} ${formatMinor(minor, exponent)}`;
}

/** Decimals of an EPC in major units. */
export const EPC_DECIMALS = 4;

/**
 * EPC in major units with four decimals ("USD 0.1250"), from the exact
 * payable and clicks rather than the float per-click value.
 */
export function formatEpc(currency, payable, clicks, exponent) {
  if (clicks <= 0) return `${currency} ${NONE}`;
  const scaled = divRoundHalfEven(payable * 10n ** BigInt(EPC_DECIMALS), BigInt(clicks) * 10n ** BigInt(exponent));
  return `${currency} ${formatMinor(scaled, EPC_DECIMALS)}`;
}

/**
 * One money line (a currency's, or the reporting one) of `metric`:
 * `dataValue` is its exact value (minor units; for EPC the per-click
 * Number, "" without clicks) and `text` what is shown.
 */
export function formatMoneyLine(line, metric, clicks) {
  if (metric === 'epc') {
    return {
      dataValue: line.epc === null ? '' : String(line.epc),
      text: formatEpc(line.currency, line.payable, clicks, line.exponent),
    };
  }
  return { dataValue: String(line[metric]), text: formatMoney(line.currency, line[metric], line.exponent) };
}

/**
 * A table's money cell: the reporting-currency total when there is one
 * (followed by any currency it could not convert, so no money goes
 * unseen), else every currency: "USD 12.50 · EUR 8.00". `NONE` for none.
 */
export function moneyCellText(derived, metric) {
  const lines = derived.reporting
    ? [derived.reporting, ...derived.money.filter((line) => derived.reporting.unconverted.includes(line.currency))]
    : derived.money;
  if (lines.length === 0) return NONE;
  return lines.map((line) => formatMoneyLine(line, metric, derived.clicks).text).join(' · ');
}

/** A counter: "10,000". */
export function formatCount(count) {
  const text = groupThousands(String(Math.abs(count)));
  return count < 0 ? MINUS + text : text;
}

/** A ratio as a percentage with two decimals: "3.25 %"; `NONE` for null. */
export function formatRate(ratio) {
  if (ratio === null || ratio === undefined) return NONE;
  const [integer, fraction] = (Math.abs(ratio) * 100).toFixed(2).split('.');
  return `${ratio < 0 ? MINUS : ''}${groupThousands(integer)}.${fraction} %`;
}

function isZero(value) {
  return value === null || value === 0 || value === 0n;
}

/**
 * The change from `previous` to `current` (both BigInt or both Number or
 * null, null counting as zero), one decimal: "+12.5 %", "−3.0 %",
 * "0.0 %"; "new" when only the previous is zero, `NONE` when both are.
 */
export function formatChange(current, previous) {
  if (isZero(previous)) return isZero(current) ? NONE : 'new';
  let tenths;
  if (typeof previous === 'bigint') {
    const cur = current ?? 0n;
    const base = previous < 0n ? -previous : previous;
    tenths = divRoundHalfEven((cur - previous) * 1000n, base);
  } else {
    const cur = current ?? 0;
    tenths = BigInt(Math.round(((cur - previous) / Math.abs(previous)) * 1000));
  }
  if (tenths === 0n) return '0.0 %';
  const sign = tenths < 0n ? MINUS : '+';
  return `${sign}${formatMinor(tenths < 0n ? -tenths : tenths, 1)} %`;
}

/**
 * What a tile compares against the previous period: the count or ratio,
 * or for money the reporting-currency value if there is one, else the
 * current period's first currency (the previous period's when the current
 * has none) in both periods.
 */
export function comparedValues(metric, current, previous) {
  if (!MONEY_METRICS.includes(metric) && metric !== 'epc') return [current[metric], previous[metric]];
  if (current.reporting) return [current.reporting[metric], previous.reporting[metric]];
  const currency = (current.money[0] ?? previous.money[0])?.currency;
  const absent = metric === 'epc' ? null : 0n;
  const valueIn = (derived) => derived.money.find((line) => line.currency === currency)?.[metric] ?? absent;
  return [valueIn(current), valueIn(previous)];
}

/** "up", "down" or "flat", for colouring a change. */
export function changeDirection(current, previous) {
  const order = compareValues(current ?? null, previous ?? null);
  return order > 0 ? 'up' : order < 0 ? 'down' : 'flat';
}

/**
 * A duration for the freshness line and edge warnings: "0.4 s" under ten
 * seconds, "75 s" under two minutes, then "12 min" and "3 h 5 min".
 * Negative (clocks a little apart) reads as zero.
 */
export function formatAge(ms) {
  const clamped = Math.max(0, ms);
  if (clamped < 10_000) return `${(clamped / 1000).toFixed(1)} s`;
  const seconds = Math.floor(clamped / 1000);
  if (seconds < 120) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 120) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

const timeFormats = new Map();

/** Fields each time style shows, for Intl.DateTimeFormat. */
const TIME_STYLES = {
  datetime: { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' },
  minute: { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' },
  date: { year: 'numeric', month: '2-digit', day: '2-digit' },
  hm: { hour: '2-digit', minute: '2-digit' },
  day: { weekday: 'short', day: 'numeric', month: 'short' },
  dayhm: { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' },
};

/**
 * Unix ms in the IANA zone `tz`: "2025-03-04 14:05:09" (datetime),
 * "2025-03-04 14:05" (minute), "2025-03-04" (date), "14:05" (hm),
 * "Tue 4 Mar" (day), "4 Mar 14:05" (dayhm). Numeric styles are assembled
 * from parts so they do not depend on a locale's order.
 */
export function formatTime(ms, tz, style) {
  const key = `${tz}|${style}`;
  let format = timeFormats.get(key);
  if (!format) {
    format = new Intl.DateTimeFormat('en-GB', { timeZone: tz, hourCycle: 'h23', ...TIME_STYLES[style] });
    timeFormats.set(key, format);
  }
  const part = {};
  for (const { type, value } of format.formatToParts(ms)) part[type] = value;
  const date = `${part.year}-${part.month}-${part.day}`;
  switch (style) {
    case 'datetime': return `${date} ${part.hour}:${part.minute}:${part.second}`;
    case 'minute': return `${date} ${part.hour}:${part.minute}`;
    case 'date': return date;
    case 'hm': return `${part.hour}:${part.minute}`;
    case 'day': return `${part.weekday} ${part.day} ${part.month}`;
    case 'dayhm': return `${part.day} ${part.month} ${part.hour}:${part.minute}`;
    default: throw new RangeError(`unknown time style ${style}`);
  }
}

// === Series values and chart scale ===

export const SERIES_METRICS = [
  'clicks', 'impressions', 'conversions', 'conversion_rate', 'revenue', 'payable', 'epc',
];

/** Whether a series metric is money and needs a currency choice. */
export function isMoneySeries(metric) {
  return metric === 'revenue' || metric === 'payable' || metric === 'epc';
}

/** `#series-currency` value that stands for the reporting currency. */
export const REPORTING_CHOICE = 'reporting';

/**
 * One bucket's point of a series: `plot` (a Number for the chart's
 * geometry, null for no value), `dataValue` (exact: minor units for
 * money, the Number for ratios and EPC, "" for none) and `text`.
 * `currency` is a code or `REPORTING_CHOICE`.
 */
export function seriesPoint(derived, metric, currency, ctx) {
  if (!isMoneySeries(metric)) {
    const value = derived[metric];
    if (metric === 'conversion_rate') {
      return { plot: value, dataValue: value === null ? '' : String(value), text: formatRate(value) };
    }
    return { plot: value, dataValue: String(value), text: formatCount(value) };
  }
  const line = (currency === REPORTING_CHOICE
    ? derived.reporting
    : derived.money.find((money) => money.currency === currency)) ?? zeroLine(currency, derived, ctx);
  const { dataValue, text } = formatMoneyLine(line, metric, derived.clicks);
  const plot = metric === 'epc' ? line.epc : Number(line[metric]);
  return { plot, dataValue, text };
}

/** The money line of a currency a bucket has no money in. */
function zeroLine(currency, derived, ctx) {
  return { currency, exponent: ctx.exponentOf(currency), revenue: 0n, payable: 0n, margin: 0n, epc: derived.clicks > 0 ? 0 : null };
}

/**
 * Round tick values covering [min, max]: about `count` steps of 1, 2 or 5
 * times a power of ten; with `integer`, steps of at least 1 (counters and
 * minor units have nothing between).
 */
export function niceTicks(min, max, count, integer) {
  if (!(max > min)) max = min + 1;
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((factor) => factor * magnitude).find((candidate) => candidate >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  const ticks = [];
  const last = Math.ceil(max / step);
  for (let tickIdx = Math.floor(min / step); tickIdx <= last; tickIdx += 1) {
    // toPrecision trims the float noise of tickIdx × step (0.30000000000000004).
    ticks.push(Number((tickIdx * step).toPrecision(12)));
  }
  return ticks;
}

// === Stream reconnection ===

export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 10_000;
/** Each wait is spread by up to this fraction either way, so viewers cut off together do not return together. */
export const BACKOFF_JITTER = 0.2;

/** The wait before reconnect attempt `attemptIdx` (0 first); `random` in [0, 1). */
export function backoffDelayMs(attemptIdx, random) {
  const base = Math.min(BACKOFF_FIRST_MS * 2 ** attemptIdx, BACKOFF_MAX_MS);
  return Math.round(base * (1 + BACKOFF_JITTER * (2 * random - 1)));
}
