import * as adapter from '../adapter.mjs';
import { queueSuite } from '../../lib/suites/queue.mjs';

queueSuite(adapter);
