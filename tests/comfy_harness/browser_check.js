// Open the ComfyUI frontend in headless Debian chromium (playwright-core), load a UI
// workflow with app.loadGraphData(), report which node types the frontend finds
// missing, and save a screenshot.  Driven by browser.py:
//
//   node browser_check.js <config.json>
//
// config: {url, jobs: [{workflow_path, screenshot, to_prompt}], playwright_core, chromium, user_data_dir,
//          args: [...chromium flags], timeout_ms, width, height, settle_ms, fit_view}
// One browser session; the workflows are loaded one after the other.
// Prints one JSON line, prefixed with "ECAD_BROWSER_RESULT ", on stdout.
'use strict';
const fs = require('fs');

async function main() {
  const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const { chromium } = require(cfg.playwright_core);
    const timeout = cfg.timeout_ms || 60000;
  const result = { console_errors: [], page_errors: [], failed_requests: [], jobs: [] };

  const ctx = await chromium.launchPersistentContext(cfg.user_data_dir, {
    executablePath: cfg.chromium,
    headless: true,
    args: cfg.args,
    viewport: { width: cfg.width || 1400, height: cfg.height || 900 },
    timeout,
  });
  try {
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.setDefaultTimeout(timeout);
    page.on('console', (m) => { if (m.type() === 'error') result.console_errors.push(m.text()); });
    page.on('pageerror', (e) => result.page_errors.push(String(e && e.stack || e)));
    page.on('requestfailed', (r) => result.failed_requests.push(r.url()));

    await page.goto(cfg.url, { waitUntil: 'domcontentloaded' });
    // The app is ready when the node definitions from /object_info are registered.
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph
      && Object.keys(window.LiteGraph.registered_node_types || {}).length > 50, null, { timeout });
    await page.keyboard.press('Escape');   // a first-run dialog (templates) may be open

    for (const job of cfg.jobs) {
      const wf = JSON.parse(fs.readFileSync(job.workflow_path, 'utf8'));
      if (cfg.fit_view !== false && wf.extra) delete wf.extra.ds;   // frontend then fits the view
      const one = { console_errors: [], page_errors: [] };
      const nConsole = result.console_errors.length, nPage = result.page_errors.length;
      Object.assign(one, await page.evaluate(async ([wf, toPrompt]) => {
        const out = {};
        // What the frontend itself reports: loadGraphData passes its list of missing
        // node types to the extensions' afterConfigureGraph hook.
        if (!window.__ecadMissingHook) {
          window.__ecadMissingHook = true;
          window.app.registerExtension({
            name: 'ecad.test.missingNodes',
            afterConfigureGraph(missing) {
              window.__ecadMissing = (missing || []).map((m) => (typeof m === 'string' ? m : m.type));
            },
          });
        }
        window.__ecadMissing = null;
        await window.app.loadGraphData(wf);
        const registered = window.LiteGraph.registered_node_types;
        const types = [...new Set((wf.nodes || []).map((n) => n.type))];
        out.workflow_types = types;
        out.unregistered_types = types.filter((t) => !(t in registered));
        out.reported_missing = window.__ecadMissing;
        const nodes = window.app.graph.nodes || window.app.graph._nodes || [];
        out.graph_node_count = nodes.length;
        out.error_nodes = nodes.filter((n) => n.has_errors).map((n) => n.type);
        out.frontend_version = window.__COMFYUI_FRONTEND_VERSION__ || null;
        out.registered_count = Object.keys(registered).length;
        if (toPrompt) {
          // the frontend's own UI -> API conversion (what "Run" would POST)
          try {
            const p = await window.app.graphToPrompt();
            out.api_prompt = p.output;
          } catch (e) {
            out.api_prompt_error = String(e && e.stack || e);
          }
        }
        return out;
      }, [wf, !!job.to_prompt]));
      await page.waitForTimeout(cfg.settle_ms || 1000);
      if (job.probe) {
        // a test's JS expression (may return a promise), evaluated in the page after loading
        try {
          one.probe = await page.evaluate(job.probe);
        } catch (e) {
          one.probe = { probe_error: String(e && e.stack || e) };
        }
      }
      // The missing-nodes dialog ("global-load-workflow-warning"), if shown.
      one.dialogs = await page.evaluate(() => [...document.querySelectorAll('.p-dialog')]
        .map((d) => (d.innerText || '').trim()).filter((t) => t));
      // toasts and alerts: newer frontends (ComfyUI 0.33's 1.49) report missing nodes there, not in a dialog
      one.toasts = await page.evaluate(() => [...document.querySelectorAll(
        '.p-toast-message, [role="alert"], [role="status"], .p-message')]
        .map((d) => (d.innerText || '').trim()).filter((t) => t));
      if (job.screenshot) {
        await page.screenshot({ path: job.screenshot });
        one.screenshot = job.screenshot;
      }
      one.console_errors = result.console_errors.slice(nConsole);
      one.page_errors = result.page_errors.slice(nPage);
      result.jobs.push(one);
      // close dialogs before the next workflow
      await page.keyboard.press('Escape');
      await page.waitForTimeout(200);
    }
  } finally {
    await ctx.close();
  }
  process.stdout.write('ECAD_BROWSER_RESULT ' + JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stdout.write('ECAD_BROWSER_RESULT ' + JSON.stringify({ fatal: String(e && e.stack || e) }) + '\n');
  process.exit(1);
});
