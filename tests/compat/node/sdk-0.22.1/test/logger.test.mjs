import * as adapter from '../adapter.mjs';
import { loggerSuite } from '../../lib/suites/logger.mjs';

loggerSuite(adapter);
