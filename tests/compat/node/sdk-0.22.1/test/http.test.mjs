import * as adapter from '../adapter.mjs';
import { httpSuite } from '../../lib/suites/http.mjs';

httpSuite(adapter);
