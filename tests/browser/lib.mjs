// Starts Debian's Chromium (not Playwright's download, which cannot work
// here) headless with a fresh, empty profile, and removes it afterwards.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.STEPBOX_CHROMIUM || '/usr/bin/chromium';

const FLAGS = [
  '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

export async function launch(viewport = { width: 1280, height: 800 }) {
  const profile = mkdtempSync(join(tmpdir(), 'stepbox-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // As root Chromium refuses to start without it; the pages are our own.
    chromiumSandbox: false,
    args: ['--no-sandbox', ...FLAGS],
    viewport,
  });
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

// Fails the script with a one-line reason.
export function check(ok, what) {
  if (!ok) throw new Error('check failed: ' + what);
}
