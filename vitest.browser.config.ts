import { defineConfig } from 'vitest/config';

// `npm run test:browser`: the Chromium test alone (it needs the chromium apt package).
export default defineConfig({ test: { include: ['test/browser/**/*.test.ts'], testTimeout: 60_000 } });
