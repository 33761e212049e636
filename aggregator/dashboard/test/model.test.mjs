// Tests of model.js, the dashboard's pure logic, under node's own runner:
// `node --test aggregator/dashboard/test/`. No packages. Cases are
// tables run through one `check` each where the shape allows.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import * as model from '../model.js';

const MINUS = '\u2212';

/** A session as `GET /api/session` answers it. */
function session(overrides = {}) {
  return {
    role: 'admin',
    affiliate_id: null,
    tz: 'UTC',
    reporting_currency: null,
    rates: {},
    exponents: { USD: 2, EUR: 2, BHD: 3, JPY: 0 },
    version: 1,
    ...overrides,
  };
}

const plainCtx = model.makeContext(session());
const eurCtx = model.makeContext(session({ reporting_currency: 'EUR', rates: { USD: '0.92', BHD: '2.43', JPY: '0.0061' } }));

/** An API `Money`; payable, margin and EPC are ignored by the page, which derives them. */
function money(currency, exponent, revenue, commission, parent = '0') {
  return {
    currency,
    exponent,
    revenue_minor: revenue,
    commission_minor: commission,
    parent_commission_minor: parent,
    payable_minor: 'ignored',
    margin_minor: 'ignored',
    epc_minor: null,
  };
}

/** An API `Metrics`. */
function metrics({ impressions = 0, clicks = 0, leads = 0, sales = 0, flagged = 0, money: lines = [] } = {}) {
  return {
    impressions, clicks, unique_clicks: clicks, leads, sales, conversions: leads + sales, duplicates: 0, flagged,
    conversion_rate: null, money: lines, reporting: null,
  };
}

/** A delta row of the stream. */
function row(minuteMs, { affiliate = 7, campaign = 1, clicks = 0, leads = 0, sales = 0, impressions = 0, flagged = 0, money: lines = [] } = {}) {
  return {
    minute_ms: minuteMs, affiliate_id: affiliate, campaign_id: campaign,
    impressions, clicks, unique_clicks: clicks, leads, sales, duplicates: 0, flagged, money: lines,
  };
}

function deltaMoney(currency, revenue, commission = '0', parent = '0') {
  return { currency, revenue_minor: revenue, commission_minor: commission, parent_commission_minor: parent };
}

const MINUTE = 60_000;
const DAY = 86_400_000;
const PERIOD = { name: 'today', from_ms: DAY, to_ms: 2 * DAY, tz: 'UTC' };
const PREVIOUS = { name: 'previous', from_ms: 0, to_ms: DAY, tz: 'UTC' };

describe('flagged events', () => {
  test('are counted apart, added by deltas, and a table column of their own', () => {
    const totals = model.metricsFromApi(metrics({ clicks: 10, sales: 1, flagged: 3 }));
    model.addDeltaRow(totals, row(0, { clicks: 2, flagged: 4 }), plainCtx);
    const derived = model.derive(totals, plainCtx);
    // Flagged events are in no other count: clicks and conversions stay clean.
    assert.deepEqual([derived.clicks, derived.conversions, derived.flagged], [12, 1, 7]);
    assert.ok(model.TABLE_COLUMNS.includes('flagged') && model.COUNT_METRICS.includes('flagged'));
    assert.equal(model.sortValue({ id: 1, metrics: totals }, 'flagged', plainCtx), 7);
  });
});

describe('money arithmetic', () => {
  test('parses minor units as BigInt, beyond Number precision', () => {
    assert.equal(model.parseMinor('123456789012345678901234567890'), 123456789012345678901234567890n);
    assert.equal(model.parseMinor('-5'), -5n);
    assert.equal(model.parseMinor(undefined), 0n);
  });

  test('adds deltas of either sign to the money of a metrics', () => {
    const totals = model.metricsFromApi(metrics({ money: [money('USD', 2, '9007199254740993', '100')] }));
    model.addDeltaRow(totals, row(0, { money: [deltaMoney('USD', '10', '1', '2')] }), plainCtx);
    // A rejected sale leaves: its revenue and commissions come off again.
    model.addDeltaRow(totals, row(0, { money: [deltaMoney('USD', '-2500', '-250', '-25')] }), plainCtx);
    const usd = totals.money.get('USD');
    // 9007199254740993 is not a Number; BigInt keeps every unit.
    assert.equal(usd.revenue, 9007199254740993n + 10n - 2500n);
    assert.equal(usd.commission, 100n + 1n - 250n);
    assert.equal(usd.parent, 2n - 25n);
  });

  test('rounds half to even, either sign', () => {
    const check = (numerator, denominator, expected) =>
      assert.equal(model.divRoundHalfEven(numerator, denominator), expected, `${numerator}/${denominator}`);
    check(125n, 10n, 12n);
    check(135n, 10n, 14n);
    check(126n, 10n, 13n);
    check(124n, 10n, 12n);
    check(-125n, 10n, -12n);
    check(-135n, 10n, -14n);
    check(-126n, 10n, -13n);
    check(5n, 10n, 0n);
    check(15n, 10n, 2n);
    check(0n, 7n, 0n);
    assert.throws(() => model.divRoundHalfEven(1n, 0n), RangeError);
  });

  test('parses only plain positive decimal rates', () => {
    assert.deepEqual(model.parseRate('2.43'), { mantissa: 243n, scale: 2 });
    assert.deepEqual(model.parseRate('163'), { mantissa: 163n, scale: 0 });
    for (const bad of ['', '0', '0.00', '-1', '1.', '.5', '1e3', '1,5', ' 1', null]) {
      assert.equal(model.parseRate(bad), null, JSON.stringify(bad));
    }
  });

  test('converts into the reporting currency as API.md defines', () => {
    const check = (minor, rate, fromExponent, toExponent, expected) => assert.equal(
      model.convertMinor(minor, model.parseRate(rate), fromExponent, toExponent),
      expected,
      `${minor} at ${rate} from exponent ${fromExponent} to ${toExponent}`,
    );
    // 12345 fils BHD at 2.43 to EUR cents: 12345 × 2.43 / 10 = 2999.835 → 3000.
    check(12345n, '2.43', 3, 2, 3000n);
    // Ties go to even only on an exact half: 12.5 → 12, 13.5 → 14.
    check(125n, '0.1', 2, 2, 12n);
    check(135n, '0.1', 2, 2, 14n);
    check(-125n, '0.1', 2, 2, -12n);
    check(-135n, '0.1', 2, 2, -14n);
    check(126n, '0.1', 2, 2, 13n);
    // JPY (no decimals) into EUR cents multiplies by 100: 500 × 0.0061 × 100 = 305.
    check(500n, '0.0061', 0, 2, 305n);
    check(7n, '1', 0, 2, 700n);
    // EUR cents into JPY divides by 100: 163.5 yen, to even 164.
    check(100n, '163.5', 2, 0, 164n);
    // Larger than any Number holds exactly.
    check(10n ** 30n, '0.92', 2, 2, 92n * 10n ** 28n);
  });
});

describe('derived metrics', () => {
  test('conversion rate and EPC are null without clicks', () => {
    const derived = model.derive(model.metricsFromApi(metrics({ leads: 3, money: [money('USD', 2, '1000', '100')] })), eurCtx);
    assert.equal(derived.conversions, 3);
    assert.equal(derived.conversion_rate, null);
    assert.equal(derived.money[0].epc, null);
    assert.equal(derived.reporting.epc, null);
    assert.equal(model.formatEpc('USD', 100n, 0, 2), `USD ${model.NONE}`);
  });

  test('derives conversions, payable, margin and per-click values', () => {
    const api = metrics({ clicks: 8, leads: 1, sales: 1, money: [money('USD', 2, '10000', '800', '200')] });
    const derived = model.derive(model.metricsFromApi(api), plainCtx);
    assert.equal(derived.conversions, 2);
    assert.equal(derived.conversion_rate, 0.25);
    assert.deepEqual(derived.money, [
      { currency: 'USD', exponent: 2, revenue: 10000n, payable: 1000n, margin: 9000n, epc: 125 },
    ]);
    assert.equal(derived.reporting, null);
  });

  test('converts each currency, sums, and lists those without a rate', () => {
    const ctx = model.makeContext(session({ reporting_currency: 'EUR', rates: { BHD: '2.43' }, exponents: { EUR: 2, BHD: 3, GBP: 2 } }));
    const api = metrics({
      clicks: 4,
      money: [money('BHD', 3, '12345', '1000'), money('EUR', 2, '500', '50'), money('GBP', 2, '999', '9')],
    });
    const reporting = model.derive(model.metricsFromApi(api), ctx).reporting;
    // BHD: 3000 + EUR (rate 1): 500. Payable: 1000 fils → 243 cents, + 50.
    assert.equal(reporting.revenue, 3500n);
    assert.equal(reporting.payable, 293n);
    // Margin is converted revenue − converted payable, as the server has it.
    assert.equal(reporting.margin, 3500n - 293n);
    assert.equal(reporting.epc, 293 / 4);
    assert.deepEqual(reporting.unconverted, ['GBP']);
  });

  test('leaves out a currency whose money went back to zero', () => {
    const totals = model.metricsFromApi(metrics({ money: [money('USD', 2, '100', '10')] }));
    model.addDeltaRow(totals, row(0, { money: [deltaMoney('USD', '-100', '-10')] }), plainCtx);
    assert.deepEqual(model.derive(totals, plainCtx).money, []);
  });

  test('takes a new currency\'s exponent from the session', () => {
    const totals = model.emptyMetrics();
    model.addDeltaRow(totals, row(0, { money: [deltaMoney('BHD', '1234')] }), plainCtx);
    model.addDeltaRow(totals, row(0, { money: [deltaMoney('XTS', '1')] }), plainCtx);
    assert.equal(totals.money.get('BHD').exponent, 3);
    assert.equal(totals.money.get('XTS').exponent, model.EXPONENT_FALLBACK);
  });
});

describe('deltas', () => {
  function overview() {
    return model.overviewFromApi({
      version: 10,
      period: PERIOD,
      previous: PREVIOUS,
      current: metrics({ clicks: 100, sales: 2, money: [money('USD', 2, '5000', '500')] }),
      previous_metrics: metrics({ clicks: 50 }),
    });
  }

  test('a delta adds to the current or the previous period by its minute', () => {
    const state = overview();
    const changed = model.applyDeltaToOverview(state, {
      version: 11,
      rows: [
        row(PERIOD.from_ms + MINUTE, { clicks: 3, sales: 1, money: [deltaMoney('USD', '2500', '250', '25')] }),
        row(PREVIOUS.from_ms, { clicks: 5 }),
        // The period is half-open: its end belongs to neither.
        row(PERIOD.to_ms, { clicks: 1000 }),
      ],
    }, plainCtx);
    assert.equal(changed, true);
    assert.equal(state.version, 11);
    const current = model.derive(state.current, plainCtx);
    assert.equal(current.clicks, 103);
    assert.equal(current.conversions, 3);
    assert.deepEqual(current.money[0], {
      currency: 'USD', exponent: 2, revenue: 7500n, payable: 775n, margin: 6725n, epc: 775 / 103,
    });
    assert.equal(state.previousMetrics.clicks, 55);
  });

  test('a conversion rejected later comes off again', () => {
    const state = overview();
    model.applyDeltaToOverview(state, {
      version: 11, rows: [row(PERIOD.from_ms, { money: [deltaMoney('USD', '-5000', '-500')] })],
    }, plainCtx);
    assert.deepEqual(model.derive(state.current, plainCtx).money, []);
  });

  test('versions at or below the fetched one are ignored', () => {
    for (const version of [9, 10]) {
      const state = overview();
      const changed = model.applyDeltaToOverview(state, { version, rows: [row(PERIOD.from_ms, { clicks: 1 })] }, plainCtx);
      assert.equal(changed, false, `version ${version}`);
      assert.equal(state.current.clicks, 100);
      assert.equal(state.version, 10);
    }
    const state = overview();
    model.applyDeltaToOverview(state, { version: 12, rows: [row(PERIOD.from_ms, { clicks: 1 })] }, plainCtx);
    // The same delta again, and an older one arriving late, change nothing.
    model.applyDeltaToOverview(state, { version: 12, rows: [row(PERIOD.from_ms, { clicks: 1 })] }, plainCtx);
    model.applyDeltaToOverview(state, { version: 11, rows: [row(PERIOD.from_ms, { clicks: 1 })] }, plainCtx);
    assert.equal(state.current.clicks, 101);
  });

  test('an affiliate session counts only its own rows', () => {
    const ctx = model.makeContext(session({ role: 'affiliate:7', affiliate_id: 7 }));
    const state = overview();
    model.applyDeltaToOverview(state, {
      version: 11, rows: [row(PERIOD.from_ms, { affiliate: 7, clicks: 1 }), row(PERIOD.from_ms, { affiliate: 8, clicks: 50 })],
    }, ctx);
    assert.equal(state.current.clicks, 101);
  });

  test('a delta adds to table rows and creates rows for new ids', () => {
    const json = { version: 5, period: PERIOD, by: 'affiliate', rows: [{ id: 7, ...metrics({ clicks: 10 }) }] };
    const affiliates = model.tableFromApi(json, 'affiliate');
    const campaigns = model.tableFromApi({ ...json, by: 'campaign', rows: [{ id: 1, ...metrics({ clicks: 10 }) }] }, 'campaign');
    const entry = affiliates.rows.get(7);
    model.cachedDerive(entry, plainCtx);
    const delta = {
      version: 6,
      rows: [
        row(PERIOD.from_ms, { affiliate: 7, campaign: 1, clicks: 2 }),
        row(PERIOD.from_ms, { affiliate: 9, campaign: 1, clicks: 1, sales: 1, money: [deltaMoney('EUR', '800')] }),
        row(PREVIOUS.from_ms, { affiliate: 11, campaign: 1, clicks: 99 }),
      ],
    };
    assert.equal(model.applyDeltaToTable(affiliates, delta, plainCtx), true);
    assert.equal(model.applyDeltaToTable(campaigns, delta, plainCtx), true);
    assert.deepEqual([...affiliates.rows.keys()], [7, 9]);
    // The cached derived values were dropped with the change.
    assert.equal(entry.derived, null);
    assert.equal(model.cachedDerive(entry, plainCtx).clicks, 12);
    const added = model.cachedDerive(affiliates.rows.get(9), plainCtx);
    assert.equal(added.conversions, 1);
    assert.equal(added.money[0].revenue, 800n);
    assert.equal(model.cachedDerive(campaigns.rows.get(1), plainCtx).clicks, 13);
    assert.equal(model.applyDeltaToTable(affiliates, delta, plainCtx), false);
  });

  test('a delta adds to the series bucket that holds its minute', () => {
    const hour = 3_600_000;
    const buckets = [0, 1, 2].map((bucketIdx) => ({
      start_ms: PERIOD.from_ms + bucketIdx * hour, end_ms: PERIOD.from_ms + (bucketIdx + 1) * hour, ...metrics(),
    }));
    const series = model.seriesFromApi({ version: 3, period: PERIOD, granularity: 'hour', buckets });
    model.applyDeltaToSeries(series, {
      version: 4,
      rows: [
        row(PERIOD.from_ms + hour - MINUTE, { clicks: 1 }),
        row(PERIOD.from_ms + hour, { clicks: 2 }),
        row(PERIOD.from_ms + 2 * hour + 59 * MINUTE, { clicks: 4 }),
        row(PERIOD.from_ms + 3 * hour, { clicks: 100 }),
        row(PERIOD.from_ms - MINUTE, { clicks: 100 }),
      ],
    }, plainCtx);
    assert.deepEqual(series.buckets.map((bucket) => bucket.metrics.clicks), [1, 2, 4]);
  });
});

describe('bucket lookup', () => {
  test('finds the last start at or before a time by binary search', () => {
    const starts = [0, 60, 120, 180, 240];
    const check = (ms, expected) => assert.equal(model.bucketIndex(starts, ms), expected, `at ${ms}`);
    check(-1, -1);
    check(0, 0);
    check(59, 0);
    check(60, 1);
    check(179, 2);
    check(240, 4);
    check(10_000, 4);
    assert.equal(model.bucketIndex([], 5), -1);
    // Uneven buckets, as around a daylight-saving change.
    const uneven = [0, 3_600_000, 10_800_000, 14_400_000];
    assert.equal(model.bucketIndex(uneven, 7_200_000), 1);
    // Against a linear scan over many starts.
    const many = Array.from({ length: 1000 }, (_, startIdx) => startIdx * 7);
    for (const ms of [0, 1, 6, 7, 700, 6993, 6999, 7000]) {
      assert.equal(model.bucketIndex(many, ms), many.findLastIndex((start) => start <= ms), `at ${ms}`);
    }
  });
});

describe('tables', () => {
  function table(ctx) {
    const rows = [
      { id: 3, ...metrics({ clicks: 5, money: [money('USD', 2, '10000', '0')] }) },
      { id: 12, ...metrics({ clicks: 0, money: [money('EUR', 2, '9500', '0')] }) },
      { id: 25, ...metrics({ clicks: 9, money: [money('USD', 2, '200', '0'), money('EUR', 2, '99999', '0')] }) },
      { id: 130, ...metrics({ clicks: 1 }) },
    ];
    return { ctx, table: model.tableFromApi({ version: 1, period: PERIOD, by: 'affiliate', rows }, 'affiliate') };
  }
  const ids = ({ ctx, table: t }, options) =>
    model.visibleRows(t, { filter: '', column: 'id', direction: 'asc', ...options }, ctx).map((entry) => entry.id);

  test('filters by id substring', () => {
    assert.deepEqual(ids(table(plainCtx), { filter: '2' }), [12, 25]);
    assert.deepEqual(ids(table(plainCtx), { filter: ' 13 ' }), [130]);
    assert.deepEqual(ids(table(plainCtx), { filter: '' }), [3, 12, 25, 130]);
  });

  test('sorts both ways, nulls lowest, ties by id', () => {
    assert.deepEqual(ids(table(plainCtx), { column: 'clicks', direction: 'desc' }), [25, 3, 130, 12]);
    assert.deepEqual(ids(table(plainCtx), { column: 'id', direction: 'desc' }), [130, 25, 12, 3]);
    // Conversion rate is null for id 12 (no clicks), 0 for the others.
    assert.deepEqual(ids(table(plainCtx), { column: 'conversion_rate' }), [12, 3, 25, 130]);
  });

  test('money sorts by the first currency without a reporting currency', () => {
    // First currency by code: 3 USD 10000, 12 EUR 9500, 25 EUR 99999, 130 none (0).
    assert.deepEqual(ids(table(plainCtx), { column: 'revenue' }), [130, 12, 3, 25]);
  });

  test('money sorts by the converted total with one', () => {
    // EUR: 3 → 9200, 12 → 9500, 25 → 184 + 99999, 130 → 0.
    assert.deepEqual(ids(table(eurCtx), { column: 'revenue', direction: 'desc' }), [25, 12, 3, 130]);
  });

  test('compares BigInt and Number values, null lowest', () => {
    assert.equal(model.compareValues(2n ** 70n, 2n ** 70n + 1n), -1);
    assert.equal(model.compareValues(null, -5), -1);
    assert.equal(model.compareValues(3, null), 1);
    assert.equal(model.compareValues(null, null), 0);
  });

  test('money cells carry each currency by code and show the reporting total', () => {
    const { table: t } = table(eurCtx);
    const derived = model.cachedDerive(t.rows.get(25), eurCtx);
    assert.equal(model.moneyDataValue(derived, 'revenue'), 'EUR:99999 USD:200');
    assert.equal(model.moneyDataValue(derived, 'epc'), 'EUR:0 USD:0');
    assert.equal(model.moneyCellText(derived, 'revenue'), 'EUR 1,001.83');
    const plain = model.cachedDerive(table(plainCtx).table.rows.get(25), plainCtx);
    assert.equal(model.moneyCellText(plain, 'revenue'), 'EUR 999.99 · USD 2.00');
    assert.equal(model.moneyCellText(model.cachedDerive(t.rows.get(130), plainCtx), 'revenue'), model.NONE);
  });

  test('a currency without a rate shows beside the reporting total', () => {
    const ctx = model.makeContext(session({ reporting_currency: 'EUR', rates: {}, exponents: { EUR: 2, GBP: 2 } }));
    const derived = model.derive(model.metricsFromApi(metrics({ money: [money('EUR', 2, '100', '0'), money('GBP', 2, '250', '0')] })), ctx);
    assert.equal(model.moneyCellText(derived, 'revenue'), 'EUR 1.00 · GBP 2.50');
  });
});

describe('formatting', () => {
  test('money in major units with thousands separators, from BigInt', () => {
    const check = (minor, exponent, expected) => assert.equal(model.formatMinor(minor, exponent), expected);
    check(12500n, 2, '125.00');
    check(5n, 2, '0.05');
    check(0n, 2, '0.00');
    check(-5n, 2, `${MINUS}0.05`);
    check(123456789n, 2, '1,234,567.89');
    check(12345n, 3, '12.345');
    check(1234567n, 0, '1,234,567');
    check(-1000n, 0, `${MINUS}1,000`);
    check(123456789012345678901234n, 2, '1,234,567,890,123,456,789,012.34');
    assert.equal(model.formatMoney('USD', 12500n, 2), 'USD 125.00');
  });

  test('EPC in major units with four decimals, rounded half to even', () => {
    assert.equal(model.formatEpc('USD', 100n, 8, 2), 'USD 0.1250');
    assert.equal(model.formatEpc('JPY', 1n, 3, 0), 'JPY 0.3333');
    assert.equal(model.formatEpc('BHD', 1n, 2, 3), 'BHD 0.0005');
    assert.equal(model.formatEpc('USD', -100n, 8, 2), `USD ${MINUS}0.1250`);
    // 0.000125 → 0.0001 (tie to even); 0.000375 → 0.0004.
    assert.equal(model.formatEpc('USD', 1n, 80, 2), 'USD 0.0001');
    assert.equal(model.formatEpc('USD', 3n, 80, 2), 'USD 0.0004');
  });

  test('money lines for tiles and data-value', () => {
    const line = { currency: 'USD', exponent: 2, revenue: 12500n, payable: 100n, margin: 12400n, epc: 12.5 };
    assert.deepEqual(model.formatMoneyLine(line, 'revenue', 8), { dataValue: '12500', text: 'USD 125.00' });
    assert.deepEqual(model.formatMoneyLine(line, 'epc', 8), { dataValue: '12.5', text: 'USD 0.1250' });
    assert.deepEqual(model.formatMoneyLine({ ...line, epc: null }, 'epc', 0), { dataValue: '', text: `USD ${model.NONE}` });
  });

  test('counts and rates', () => {
    assert.equal(model.formatCount(10000), '10,000');
    assert.equal(model.formatCount(0), '0');
    assert.equal(model.formatCount(-1234), `${MINUS}1,234`);
    assert.equal(model.formatRate(0.0325), '3.25 %');
    assert.equal(model.formatRate(1), '100.00 %');
    assert.equal(model.formatRate(12.5), '1,250.00 %');
    assert.equal(model.formatRate(null), model.NONE);
  });

  test('change against the previous period', () => {
    const check = (current, previous, expected) =>
      assert.equal(model.formatChange(current, previous), expected, `${current} vs ${previous}`);
    check(1125, 1000, '+12.5 %');
    check(970, 1000, `${MINUS}3.0 %`);
    check(1000, 1000, '0.0 %');
    check(5, 0, 'new');
    check(0, 0, model.NONE);
    check(0, 10, `${MINUS}100.0 %`);
    check(null, null, model.NONE);
    check(0.03, null, 'new');
    check(30000, 1, '+2,999,900.0 %');
    check(11250n, 10000n, '+12.5 %');
    // Against a negative margin the change is relative to its size.
    check(-50n, -100n, '+50.0 %');
    check(1n, 0n, 'new');
    // Exact for money beyond Number precision: +1 unit in 2^60 shows as 0.0 %.
    check(2n ** 60n + 1n, 2n ** 60n, '0.0 %');
    assert.equal(model.changeDirection(2, 1), 'up');
    assert.equal(model.changeDirection(1n, 2n), 'down');
    assert.equal(model.changeDirection(null, null), 'flat');
  });

  test('what money tiles compare', () => {
    const derive = (ctx, lines, clicks = 10) => model.derive(model.metricsFromApi(metrics({ clicks, money: lines })), ctx);
    const current = [money('EUR', 2, '200', '20'), money('USD', 2, '1000', '100')];
    const previous = [money('USD', 2, '500', '50')];
    // Without a reporting currency: the current period's first currency, EUR, in both.
    assert.deepEqual(model.comparedValues('revenue', derive(plainCtx, current), derive(plainCtx, previous)), [200n, 0n]);
    // With one: the converted totals.
    assert.deepEqual(model.comparedValues('revenue', derive(eurCtx, current), derive(eurCtx, previous)), [200n + 920n, 460n]);
    assert.deepEqual(model.comparedValues('epc', derive(plainCtx, current), derive(plainCtx, previous, 0)), [2, null]);
    assert.deepEqual(model.comparedValues('clicks', derive(plainCtx, current), derive(plainCtx, previous, 4)), [10, 4]);
  });

  test('ages', () => {
    const check = (ms, expected) => assert.equal(model.formatAge(ms), expected);
    check(400, '0.4 s');
    check(-30, '0.0 s');
    check(9_949, '9.9 s');
    check(75_000, '75 s');
    check(119_999, '119 s');
    check(120_000, '2 min');
    check(3 * 3_600_000 + 5 * 60_000, '3 h 5 min');
  });

  test('times in a zone', () => {
    const ms = Date.UTC(2025, 2, 4, 13, 5, 9);
    assert.equal(model.formatTime(ms, 'UTC', 'datetime'), '2025-03-04 13:05:09');
    assert.equal(model.formatTime(ms, 'Europe/Berlin', 'datetime'), '2025-03-04 14:05:09');
    assert.equal(model.formatTime(ms, 'Asia/Kolkata', 'hm'), '18:35');
    assert.equal(model.formatTime(ms, 'America/Los_Angeles', 'date'), '2025-03-04');
    assert.equal(model.formatTime(ms, 'Asia/Tokyo', 'day'), 'Tue 4 Mar');
    assert.equal(model.formatTime(Date.UTC(2025, 2, 4, 23, 0), 'Asia/Tokyo', 'minute'), '2025-03-05 08:00');
    // Midnight reads 00, not 24.
    assert.equal(model.formatTime(Date.UTC(2025, 0, 1), 'UTC', 'hm'), '00:00');
  });
});

describe('series', () => {
  const derived = model.derive(model.metricsFromApi(metrics({
    clicks: 8, sales: 2, money: [money('USD', 2, '12500', '100')],
  })), eurCtx);

  test('points carry exact values and their text', () => {
    assert.deepEqual(model.seriesPoint(derived, 'clicks', null, eurCtx), { plot: 8, dataValue: '8', text: '8' });
    assert.deepEqual(model.seriesPoint(derived, 'conversion_rate', null, eurCtx), { plot: 0.25, dataValue: '0.25', text: '25.00 %' });
    assert.deepEqual(model.seriesPoint(derived, 'revenue', 'USD', eurCtx), { plot: 12500, dataValue: '12500', text: 'USD 125.00' });
    assert.deepEqual(model.seriesPoint(derived, 'revenue', model.REPORTING_CHOICE, eurCtx), { plot: 11500, dataValue: '11500', text: 'EUR 115.00' });
    assert.deepEqual(model.seriesPoint(derived, 'epc', 'USD', eurCtx), { plot: 12.5, dataValue: '12.5', text: 'USD 0.1250' });
    // A bucket without that currency is zero in it, with its exponent.
    assert.deepEqual(model.seriesPoint(derived, 'payable', 'BHD', eurCtx), { plot: 0, dataValue: '0', text: 'BHD 0.000' });
  });

  test('ticks are round and cover the range', () => {
    assert.deepEqual(model.niceTicks(0, 10, 5, true), [0, 2, 4, 6, 8, 10]);
    assert.deepEqual(model.niceTicks(0, 0, 5, true), [0, 1]);
    assert.deepEqual(model.niceTicks(0, 3, 5, true), [0, 1, 2, 3]);
    assert.deepEqual(model.niceTicks(0, 0.3, 5, false), [0, 0.1, 0.2, 0.3]);
    // A negative low end: 135 in about 5 steps is 27 a step, rounded up to 50.
    assert.deepEqual(model.niceTicks(-40, 95, 5, true), [-50, 0, 50, 100]);
    assert.deepEqual(model.niceTicks(0, 0.4, 4, true), [0, 1]);
  });
});

describe('reconnect backoff', () => {
  test('doubles from 0.5 s to 10 s, spread ±20 %', () => {
    const bases = [500, 1000, 2000, 4000, 8000, 10_000, 10_000];
    bases.forEach((base, attemptIdx) => {
      assert.equal(model.backoffDelayMs(attemptIdx, 0.5), base, `attempt ${attemptIdx}`);
      assert.equal(model.backoffDelayMs(attemptIdx, 0), base * 0.8);
      assert.ok(model.backoffDelayMs(attemptIdx, 0.999999) <= base * 1.2);
    });
    assert.equal(model.backoffDelayMs(5000, 0.5), 10_000);
  });
});
