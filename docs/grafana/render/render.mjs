// A small, faithful renderer of docs/grafana/tollgate.json for the README's screenshot: it is NOT Grafana. Each
// panel's queries go to Prometheus's HTTP API (/api/v1/query_range, or /api/v1/query for stat panels) with Grafana's
// variables substituted ($__rate_interval, $__range), legends from `legendFormat`, and the panels are laid out on
// Grafana's 24-column grid (gridPos) and drawn with uPlot in Debian's Chromium, driven by playwright-core.
//
// node render.mjs --dashboard FILE --prometheus URL --out PNG [--minutes 10 | --start UNIX_SECONDS] [--rate-interval 1m]
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const dashboard = JSON.parse(readFileSync(args.dashboard, 'utf8'));
const prom = args.prometheus;
const rateInterval = args['rate-interval'] ?? '1m';
const end = Math.floor(Date.now() / 1000);
const start = args.start ? Number(args.start) : end - Number(args.minutes ?? 10) * 60;
const minutes = Math.round((end - start) / 6) / 10;
const step = Math.max(2, Math.floor((end - start) / 240));

const substitute = (expr) => expr.replaceAll('$__rate_interval', rateInterval).replaceAll('$__range', `${end - start}s`);
const legend = (format, metric) =>
  (format || '{{__name__}}').replace(/\{\{\s*(\w+)\s*\}\}/g, (_, l) => metric[l] ?? '');

async function api(path, params) {
  const r = await fetch(`${prom}${path}?${new URLSearchParams(params)}`);
  const body = await r.json();
  if (body.status !== 'success') throw new Error(`${path} ${JSON.stringify(params)}: ${body.error}`);
  return body.data.result;
}

const panels = [];
for (const p of dashboard.panels) {
  if (p.type === 'row') {
    panels.push({ type: 'row', title: p.title, gridPos: p.gridPos });
    continue;
  }
  const series = [];
  for (const t of p.targets) {
    const expr = substitute(t.expr);
    if (p.type === 'stat') {
      for (const s of await api('/api/v1/query', { query: expr, time: end })) {
        series.push({ label: legend(t.legendFormat, s.metric), value: Number(s.value[1]) });
      }
    } else {
      for (const s of await api('/api/v1/query_range', { query: expr, start, end, step })) {
        const values = new Map(s.values.map(([ts, v]) => [ts, Number(v)]));
        series.push({ label: legend(t.legendFormat, s.metric), values: Object.fromEntries(values) });
      }
    }
  }
  panels.push({ type: p.type, title: p.title, gridPos: p.gridPos, unit: p.fieldConfig?.defaults?.unit ?? 'short', series });
}
const times = [];
for (let ts = start; ts <= end; ts += step) times.push(ts);

const require = createRequire(import.meta.url);
const uplotJs = readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8');
const uplotCss = readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
const width = 1800, unitH = 30, gap = 8, colW = (width - gap) / 24;
const rows = Math.max(...panels.map((p) => p.gridPos.y + p.gridPos.h));

const html = `<!doctype html><html><head><meta charset="utf-8"><style>${uplotCss}
body{margin:0;background:#111217;color:#ccccdc;font:12px Inter,Helvetica,Arial,sans-serif}
#top{height:40px;line-height:40px;padding:0 ${gap}px;font-size:16px;color:#fff}
#top small{color:#8e8e9e;font-size:12px;margin-left:12px}
#grid{position:relative;width:${width}px;height:${rows * unitH}px}
.panel{position:absolute;background:#181b1f;border:1px solid #2a2d33;border-radius:2px;box-sizing:border-box;overflow:hidden}
.panel h3{margin:0;padding:6px 8px;font-size:12px;font-weight:500;color:#d8d9da}
.row{position:absolute;font-size:14px;font-weight:500;color:#fff;line-height:${unitH}px}
.stat{display:flex;align-items:center;justify-content:center;height:calc(100% - 28px);font-size:42px;color:#73bf69}
.u-legend{font-size:11px}.u-legend .u-marker{width:10px;height:3px}
.u-legend th{font-weight:400}.u-legend td{display:none}
</style><script>${uplotJs}</script></head><body>
<div id="top">Tollgate <small>docs/grafana/tollgate.json, last ${minutes} min, rendered from Prometheus by docs/grafana/render (not Grafana)</small></div>
<div id="grid"></div>
<script>
const panels = ${JSON.stringify(panels)}, times = ${JSON.stringify(times)};
const colors = ['#73bf69','#f2cc0c','#5794f2','#ff9830','#f2495c','#b877d9','#8ab8ff','#fade2a','#96d98d','#ffa6b0','#ca95e5','#c4162a'];
const fmt = (unit, v) => {
  if (v == null || Number.isNaN(v)) return '–';
  switch (unit) {
    case 'percentunit': return (v * 100).toFixed(v < 0.01 && v > 0 ? 2 : 1) + '%';
    case 's': return v < 1e-3 ? (v * 1e6).toFixed(0) + ' µs' : v < 1 ? (v * 1e3).toFixed(v < 0.01 ? 2 : 1) + ' ms' : v.toFixed(1) + ' s';
    case 'reqps': return +v.toPrecision(3) + ' req/s';
    case 'ops': return +v.toPrecision(3) + ' /s';
    default: return Math.abs(v) >= 1000 ? (v / 1000).toPrecision(3) + 'k' : String(+v.toPrecision(3));
  }
};
const grid = document.getElementById('grid');
for (const p of panels) {
  const g = p.gridPos, x = ${gap} + g.x * ${colW}, y = g.y * ${unitH};
  if (p.type === 'row') {
    const d = document.createElement('div'); d.className = 'row'; d.textContent = '⌄ ' + p.title;
    Object.assign(d.style, { left: x + 'px', top: y + 'px' }); grid.appendChild(d); continue;
  }
  const d = document.createElement('div'); d.className = 'panel';
  const w = g.w * ${colW} - ${gap}, h = g.h * ${unitH} - ${gap};
  Object.assign(d.style, { left: x + 'px', top: y + 'px', width: w + 'px', height: h + 'px' });
  d.innerHTML = '<h3></h3>'; d.querySelector('h3').textContent = p.title; grid.appendChild(d);
  if (p.type === 'stat') {
    const s = document.createElement('div'); s.className = 'stat';
    s.textContent = p.series.length ? p.series.map((x) => fmt(p.unit, x.value)).join('  ') : 'No data';
    d.appendChild(s); continue;
  }
  const data = [times, ...p.series.map((s) => times.map((t) => { const v = s.values[t]; return v == null || !Number.isFinite(v) ? null : v; }))];
  new uPlot({
    width: w - 2, height: h - 30 - 18 * Math.ceil(p.series.length / 3),
    legend: { show: true, live: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min ?? 0), max > 0 ? max * 1.1 : 1] } },
    axes: [
      { stroke: '#8e8e9e', grid: { stroke: '#2a2d33' }, ticks: { stroke: '#2a2d33' } },
      { stroke: '#8e8e9e', grid: { stroke: '#2a2d33' }, ticks: { stroke: '#2a2d33' }, size: 70, values: (u, vals) => vals.map((v) => fmt(p.unit, v)) },
    ],
    series: [{}, ...p.series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length], width: 1.5, spanGaps: true, fill: colors[i % colors.length] + '18' }))],
  }, data, d);
}
document.body.dataset.done = '1';
</script></body></html>`;

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width, height: rows * unitH + 48 } });
await page.setContent(html);
await page.waitForSelector('body[data-done="1"]');
await page.screenshot({ path: args.out, fullPage: true });
await browser.close();
console.log(`rendered ${panels.filter((p) => p.type !== 'row').length} panels to ${args.out}`);
