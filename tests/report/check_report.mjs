// Opens a plexus report in headless Chromium (Debian's) and checks that it rendered: every chart
// the page announces painted pixels on its canvas and keeps at least MIN_PLOT_SHARE of its canvas
// for the plot itself (legends and axis labels may not squeeze it), no console error or page
// error, and no request left the file (the page must be self-contained). Prints what it found as
// JSON; exits 1 if wrong. With SCREENSHOT, saves the page there as PNG.
// Usage: node check_report.mjs REPORT.html NODE_MODULES_DIR EXPECTED_CHARTS [SCREENSHOT]
import { createRequire } from 'module';
import path from 'path';

const [report, nodeModules, expected, screenshot] = process.argv.slice(2);
const MIN_PLOT_SHARE = 0.45;
const require = createRequire(import.meta.url);
const { chromium } = require(path.join(path.resolve(nodeModules), 'playwright-core'));

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
                                        args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 2000 } });
const errors = [];
const external = [];
page.on('console', m => { if (m.type() === 'error') errors.push(m.text()); });
page.on('pageerror', e => errors.push(String(e)));
page.on('request', r => { if (!r.url().startsWith('file:') && !r.url().startsWith('data:')) external.push(r.url()); });
await page.goto('file://' + path.resolve(report), { waitUntil: 'load' });
const found = await page.evaluate(() => {
  const canvases = [...document.querySelectorAll('canvas')].map(c => {
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted++;
    return { id: c.id, width: c.width, height: c.height, painted };
  });
  return { charts: window.plexusReport ? window.plexusReport.charts : [], canvases,
           plot_share: window.plexusReport ? window.plexusReport.plot_share : {},
           table_rows: document.querySelectorAll('table tr').length };
});
if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
await browser.close();
const squeezed = found.charts.filter(id => !(found.plot_share[id] >= MIN_PLOT_SHARE));
const blank = found.canvases.filter(c => found.charts.includes(c.id) && c.painted < 500);
const result = { ...found, errors, external, blank: blank.map(c => c.id), squeezed };
console.log(JSON.stringify(result, null, 1));
const ok = errors.length === 0 && external.length === 0 && blank.length === 0 && squeezed.length === 0 &&
           found.charts.length === Number(expected) && found.canvases.length === Number(expected);
if (!ok) { console.error('report check FAILED'); process.exit(1); }
console.error('report check passed: ' + found.charts.length + ' charts drawn, no errors');
