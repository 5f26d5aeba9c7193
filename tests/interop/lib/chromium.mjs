// Headless Chromium for the browser suites: Debian's /usr/bin/chromium (or $CHROMIUM_PATH)
// driven by playwright-core, with the flags that keep it quiet and local on a CI machine.

import { chromium } from 'playwright-core';

/** The Chromium executable the suites use. */
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Launches headless Chromium; `cacheDir`, when given, holds its disk cache. */
export function launchChromium(cacheDir) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...(cacheDir ? [`--disk-cache-dir=${cacheDir}`] : []),
    ],
  });
}
